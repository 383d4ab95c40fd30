"""Which predictions the pictures draw: a score threshold and a cap, best first; threshold 0 = the best N."""

from types import SimpleNamespace

import numpy as np
import pytest

from eval.__main__ import parse_args
from eval.plots import _pred_rule, _shown_preds


def test_drawn_predictions_follow_threshold_and_cap():
    view = SimpleNamespace(pred_scores=np.array([0.10, 0.50, 0.20, 0.40, 0.05]))
    assert _shown_preds(view, 0.3, 100).tolist() == [1, 3]
    assert _shown_preds(view, 0.45, 100).tolist() == [1]
    assert _shown_preds(view, 0.0, 3).tolist() == [1, 3, 2]  # low-scoring model: still shows its best 3
    assert _pred_rule(0.0, 3) == "best 3" and _pred_rule(0.3, 100) == "score >= 0.3, at most 100"


def test_max_drawn_is_a_cli_option():
    args = parse_args(["--shards", "s", "--checkpoint", "c", "--score-thr", "0", "--max-drawn", "20"])
    assert args.max_drawn == 20 and args.score_thr == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--shards", "s", "--checkpoint", "c", "--max-drawn", "-1"])
