"""The blind real-vs-fake realism study (ParaColorizer IV-D-1) as Gradio tabs. Work in progress."""
from __future__ import annotations

import gradio as gr


def build_study_tabs(available: dict, settings=None) -> None:
    """Add the study's participant and results tabs to the enclosing ``gr.Blocks``."""
    with gr.Tab("Realism study"):
        gr.Markdown("The realism study is being set up.")
