"""Streaming evaluation: ``python -m eval`` (see ``eval/__main__.py``).

* :mod:`eval.submission` — model outputs -> nuScenes submission JSON; validation with clear errors.
* :mod:`eval.gt` — ground truth from the shards' Arrow sidecars as the devkit's ``EvalBoxes``.
* :mod:`eval.metrics` — NDS / mAP / TP errors with the devkit's algorithms (``score``), report table.
* :mod:`eval.inference` — checkpoint loading, eval loader config, streaming inference with BEVHistory.
* :mod:`eval.plots` — the devkit's PR/TP curves, camera pictures with projected boxes, BEV plots.
"""
