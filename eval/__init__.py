"""Streaming evaluation: ``python -m eval`` (see ``eval/__main__.py``), a thin CLI over :mod:`eval.api`.

* :mod:`eval.api` — ``evaluate_checkpoint`` / ``evaluate_predictions`` / ``evaluate_predictor`` -> ``EvalResult``
  (also written as ``eval_result.json``; ``read_result`` reads it back).
* :mod:`eval.dist` — several processes (``torchrun -m eval``): whole scenes per rank, gathered to rank 0.
* :mod:`eval.submission` — model outputs -> nuScenes submission JSON; validation with clear errors.
* :mod:`eval.gt` — ground truth from the shards' Arrow sidecars as the devkit's ``EvalBoxes``.
* :mod:`eval.metrics` — NDS / mAP / TP errors with the devkit's algorithms (``score``), report table.
* :mod:`eval.inference` — checkpoint loading, eval loader config, streaming inference with BEVHistory.
* :mod:`eval.plots` — the devkit's PR/TP curves, camera pictures with projected boxes, BEV plots.
"""
