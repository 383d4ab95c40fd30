"""``eval.api``: evaluation as a library (an ``EvalResult`` back, the same written as ``eval_result.json``), and
``train.workflow.evaluate``, which runs ``python -m eval`` and reads that file back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.api import EvalInputError, EvalResult, check_points_available, evaluate_predictions, read_result
from eval.baselines import constant_submission
from eval.submission import write_submission


@pytest.fixture(scope="module")
def constant_json(synth_shards, tmp_path_factory) -> Path:
    sub = constant_submission(str(synth_shards["mini_train"]), str(synth_shards["mini_val"]), per_class=3)
    return write_submission(sub, tmp_path_factory.mktemp("const") / "const.json")


def test_evaluate_predictions_returns_what_it_writes(synth_shards, constant_json, tmp_path):
    res = evaluate_predictions(constant_json, str(synth_shards["mini_val"]), out=tmp_path, pictures=0,
                               curves="none", verbose=False)
    assert isinstance(res, EvalResult) and res.ok and res.complete
    assert res.num_samples == res.num_expected == 12
    on_disk = json.loads(Path(res.paths["summary"]).read_text())
    assert res.summary == on_disk and res.per_class_ap == on_disk["mean_dist_aps"]
    assert 0.0 <= res.metrics()["nd_score"] <= 1.0 and res.metrics()["num_samples"] == 12
    assert read_result(tmp_path) == res  # the result file is the returned result


def test_bad_input_raises_and_leaves_a_result_naming_it(synth_shards, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(EvalInputError, match="nope.json"):
        evaluate_predictions(missing, str(synth_shards["mini_val"]), out=tmp_path / "o", verbose=False)
    res = read_result(tmp_path / "o")
    assert res.exit_code == 2 and not res.complete and "nope.json" in res.message
    with pytest.raises(EvalInputError, match="not an eval result"):
        (tmp_path / "x.json").write_text("{}")
        read_result(tmp_path / "x.json")


def test_a_points_model_is_refused_shards_without_lidar(synth_shards, synth_shards_lidar):
    from pipeline.urls import IOOptions, expand_shard_urls

    with pytest.raises(EvalInputError, match="without LiDAR"):
        check_points_available(expand_shard_urls(str(synth_shards["mini_val"])), IOOptions(), "needs points")
    check_points_available(expand_shard_urls(str(synth_shards_lidar)), IOOptions(), "needs points")


def test_workflow_reads_the_eval_result_back(synth_shards, constant_json, tmp_path):
    from train import workflow

    val = str(synth_shards["mini_val"])
    args = ["--shards", val, "--predictions", str(constant_json), "--pictures", "0", "--curves", "none",
            "--no-progress"]
    res = workflow.evaluate(tmp_path / "ok", *args)
    direct = evaluate_predictions(constant_json, val, out=tmp_path / "direct", pictures=0, curves="none",
                                  verbose=False)
    assert res.summary["nd_score"] == direct.summary["nd_score"] and res.num_samples == 12
    bad = ["--shards", str(tmp_path / "no_shards"), "--predictions", str(constant_json)]
    assert workflow.evaluate(tmp_path / "bad", *bad, check=False) is None
    with pytest.raises(SystemExit, match="no_shards"):
        workflow.evaluate(tmp_path / "bad", *bad)
