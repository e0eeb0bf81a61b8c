"""The blind real-vs-fake realism study (ParaColorizer section IV-D-1, Table III), one subject in one package:

- ``study.protocol``: the organiser's settings, the balanced and secretly seeded assignment, ``Study`` (runs
  participants through it);
- ``study.scoring``: the four cases, the fooling score, bootstrap intervals, Table III;
- ``study.store``: the SQLite store of participants, trials (with the answer key) and answers;
- ``study.stimuli``: the photos, the cached recolourings and how a pair is encoded for the browser;
- ``study.tab``: the Gradio tabs (participant and organiser).

``colorizers`` knows nothing of the study; the study uses ``colorizers`` for the models and the pipeline.
"""
