"""``python -m eval.curve``: one evaluation per complete checkpoint, resumable, with a picture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import eval.api as eval_api
from eval.curve import main

IMAGE_SIZE = [64, 176]


def _checkpoint(run: Path, step: int, seed: int, complete: bool = True) -> Path:
    from bev_model import build_model, get_preset

    ckpt = run / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(build_model(get_preset("tiny")).state_dict(), ckpt / "weights_fp32.pt")
    (ckpt / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"preset": "tiny"}, "data": {"shards": "unused", "image_size": IMAGE_SIZE}}))
    if complete:
        (ckpt / "complete").write_text("")
    return ckpt


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    _checkpoint(run, 0, seed=0)
    _checkpoint(run, 5, seed=1)
    _checkpoint(run, 10, seed=2, complete=False)  # a checkpoint still being written: skipped
    return run


def test_curve_scores_every_complete_checkpoint_and_resumes(run_dir, synth_shards, tmp_path, monkeypatch, capsys):
    val = str(synth_shards["mini_val"])
    out = tmp_path / "curve"
    common = ["--run", str(run_dir), "--shards", val, "--out", str(out), "--max-samples", "2", "--num-workers", "0"]
    assert main(common) == 0, capsys.readouterr().err
    record = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in record["points"]] == [0, 5]
    for p in record["points"]:
        s = json.loads(Path(p["summary"]).read_text())
        assert s["num_samples"] == 2 and s["checkpoint"].endswith(f"step_{p['step']:08d}")
        assert (p["mAP"], p["NDS"], p["car_AP"]) == (s["mean_ap"], s["nd_score"], s["mean_dist_aps"]["car"])
    assert (out / "curve.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "step" in printed and "car AP" in printed

    # a second run reuses every summary (the eval would fail if called) and draws a baseline line
    def no_eval(ckpt, shards, **kw):
        raise AssertionError(f"re-evaluated {ckpt}")

    monkeypatch.setattr(eval_api, "evaluate_checkpoint", no_eval)
    base = record["points"][0]["summary"]
    assert main(common + ["--baseline", f"untrained={base}"]) == 0
    again = json.loads((out / "curve.json").read_text())
    assert again["points"] == record["points"] and again["baselines"]["untrained"]["mAP"] == record["points"][0]["mAP"]

    # another sample count is another evaluation: the 2-sample summaries are not reused for 1 sample, nor
    # for the whole split (no --max-samples)
    def failing(calls):
        def evaluate_checkpoint(ckpt, shards, **kw):
            calls.append(kw)
            return eval_api.EvalResult(complete=False, num_samples=0, num_expected=2, exit_code=3, message="boom")
        return evaluate_checkpoint

    for extra, want in ((["--max-samples", "1"], 1), ([], None)):
        calls = []
        monkeypatch.setattr(eval_api, "evaluate_checkpoint", failing(calls))
        assert main(common[:-4] + extra + ["--num-workers", "0"]) == 2
        assert len(calls) == 1 and calls[0]["max_samples"] == want
        assert "failed (exit 3: boom)" in capsys.readouterr().err

    # --device reaches each evaluation (a GPU run scores its checkpoints on the GPU)
    calls = []
    monkeypatch.setattr(eval_api, "evaluate_checkpoint", failing(calls))
    assert main(common[:-4] + ["--num-workers", "0", "--device", "cuda:1"]) == 2
    assert calls[0]["device"] == "cuda:1"


def test_curve_bad_input_names_the_culprit(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["--run", str(empty), "--shards", "unused"]) == 2
    assert str(empty) in capsys.readouterr().err
    assert main(["--run", str(run_dir), "--shards", "unused", "--baseline", "no_equals_sign"]) == 2
    assert "'no_equals_sign'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mean_ap": 0.1}))
    assert main(["--run", str(run_dir), "--shards", "unused", "--baseline", f"x={bad}"]) == 2
    assert "not an eval summary" in capsys.readouterr().err
    missing = tmp_path / "no_shards_here"
    assert main(["--run", str(run_dir), "--shards", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--run", str(run_dir), "--shards", "unused", "--every", "0"])


def test_a_first_stage_summary_is_not_reused_as_the_checkpoint_score():
    from eval.curve import _reusable

    s = {"complete": True, "shards": "S", "num_samples_expected": 60}
    assert _reusable(s, "S", 60) and _reusable({**s, "stage": "final"}, "S", 60)
    assert not _reusable({**s, "stage": "first"}, "S", 60)  # `python -m eval --stage first` into the same dir
    assert not _reusable({**s, "num_samples_expected": 2}, "S", 60)
