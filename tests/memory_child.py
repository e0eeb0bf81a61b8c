"""Run in a child process by tests/test_limits.py: one Compare request (or /colorize's single model) on one file,
under an address-space limit, and print one JSON line: the refusal message or the result's size, and the
process's peak resident memory (VmHWM) in MB. A child of its own per file, so each peak is that request's.

    python -m tests.memory_child WEIGHTS_ROOT PHOTO MODEL[,MODEL...] [--limit-gb N]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile


def peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("photo")
    parser.add_argument("models")
    parser.add_argument("--limit-gb", type=float, default=8.0)
    args = parser.parse_args()
    limit = int(args.limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a runaway request fails here instead of the machine

    import gradio as gr
    import torch

    import app
    import colorizers

    torch.set_num_threads(2)
    available, unavailable = colorizers.load_colorizers(args.models.split(","), source=args.weights)
    assert not unavailable, unavailable
    baseline = peak_mb()
    result: dict = {"baseline_mb": round(baseline)}
    with tempfile.TemporaryDirectory() as cache:
        try:
            comparison, files = app.run_comparison(args.photo, list(available), available, app.Settings(), cache)
            result["size"] = list(comparison.grey.size)
            result["results"] = len(files.results)
        except gr.Error as err:
            result["refused"] = err.message
        except MemoryError:
            result["memory_error"] = True
    result["peak_mb"] = round(peak_mb())
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
