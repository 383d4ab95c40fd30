"""Streaming evaluation (``python -m eval``) from local disk, a loopback HTTP server (also one that
drops connections mid-shard) and a loopback S3 server; faults; the real tiny model end to end."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml

from eval.__main__ import main
from eval.baselines import NoisyOracle as _NoisyOracle
from eval.gt import load_ground_truth
from eval.inference import ModelPredictor, eval_loader_config, load_model, stream_predictions
from eval.metrics import compare_summaries, evaluate
from eval.submission import load_submission, make_submission, validate_submission
from shards.conventions import DEFAULT_ATTRIBUTE
from tests.servers import TEST_S3_CREDENTIALS, http_server, s3_server

IMAGE_SIZE = [64, 176]
RESET_AFTER = 60_000
"""Bytes after which the flaky HTTP server resets the first GET of every file (shards are ~100-400 kB)."""


def NoisyOracle():
    """GT boxes with xy noise 0.4 m, yaw noise 0.1 rad and one false positive per sample."""
    return _NoisyOracle(xy_sigma=0.4, yaw_sigma=0.1, false_positive=True)


@pytest.fixture(scope="module")
def val_dir(synth_shards) -> Path:
    return synth_shards["mini_val"]


@pytest.fixture(scope="module")
def val_gt(val_dir):
    return load_ground_truth(sorted(val_dir.glob("*.arrow")))


@pytest.fixture(scope="module")
def local_run(val_dir, val_gt):
    """The oracle's submission and metrics streaming the local shards."""
    cfg = eval_loader_config(str(val_dir), {"image_size": IMAGE_SIZE}, num_workers=0)
    st = stream_predictions(__import__("pipeline.loader", fromlist=["build_loader"]).build_loader(cfg),
                            NoisyOracle(), val_gt, progress=False)
    assert st.error is None and list(st.results) == val_gt.order  # every frame once, in scene order
    sub = make_submission(st.results)
    return sub, evaluate(sub, val_gt).summary


def _stream(spec: str, gt, **kw):
    from pipeline.loader import build_loader

    cfg = eval_loader_config(spec, {"image_size": IMAGE_SIZE}, num_workers=0, retry_backoff=0.01, **kw)
    st = stream_predictions(build_loader(cfg), NoisyOracle(), gt, progress=False)
    assert st.error is None, st.error
    sub = make_submission(st.results)
    return sub, evaluate(sub, gt).summary


def test_http_stream_with_dropped_connections_scores_like_local(val_dir, val_gt, local_run, caplog):
    sub_local, summary_local = local_run
    assert 0.1 < summary_local["nd_score"] < 0.9
    with caplog.at_level(logging.WARNING), http_server(val_dir, reset_after_bytes=RESET_AFTER) as url:
        sub, summary = _stream(f"{url}/manifest.json", val_gt)
    assert any("retrying" in r.getMessage() for r in caplog.records), "the server should have dropped a connection"
    assert sub == sub_local
    assert compare_summaries(summary, summary_local) == 0.0


def test_s3_stream_scores_like_local(val_dir, val_gt, local_run, monkeypatch):
    for k, v in TEST_S3_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    with s3_server(val_dir) as (endpoint, bucket):
        sub, summary = _stream(f"s3://{bucket}/manifest.json", val_gt, s3_endpoint_url=endpoint)
    assert sub == local_run[0]
    assert compare_summaries(summary, local_run[1]) == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_is_a_clear_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/mini_val/manifest.json"
    code = main(["--shards", url, "--predictions", str(tmp_path / "none.json"), "--out", str(tmp_path / "o"),
                 "--max-retries", "1", "--retry-backoff", "0.01", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert url in err and "cannot resolve --shards" in err


def test_missing_sidecar_is_a_clear_error(val_dir, tmp_path, capsys):
    broken = tmp_path / "mini_val"
    shutil.copytree(val_dir, broken)
    (broken / "mini_val-000001.arrow").unlink()
    with http_server(broken) as url:
        code = main(["--shards", f"{url}/manifest.json", "--predictions", str(tmp_path / "x.json"), "--out",
                     str(tmp_path / "o"), "--max-retries", "1", "--retry-backoff", "0.01", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "mini_val-000001.arrow" in err and "404" in err


def test_missing_shard_is_partial_and_exits_nonzero_unless_allowed(val_dir, val_gt, tmp_path, capsys):
    broken = tmp_path / "mini_val"
    shutil.copytree(val_dir, broken)
    (broken / "mini_val-000001.tar").unlink()
    n_first = load_ground_truth([broken / "mini_val-000000.arrow"]).order
    args = ["--shards", str(broken), "--out", str(tmp_path / "o"), "--no-progress", "--no-curves", "--pictures", "0",
            "--num-workers", "0"]
    code = main(args, predictor=NoisyOracle())
    err = capsys.readouterr().err
    assert code == 1
    assert f"scored {len(n_first)} of {len(val_gt.order)} samples" in err
    assert "mini_val-000001.tar" in err
    assert not (tmp_path / "o" / "metrics_summary.json").exists()

    code = main(args + ["--allow-partial"], predictor=NoisyOracle())
    captured = capsys.readouterr()
    assert code == 0
    assert f"PARTIAL RESULT: {len(n_first)} of {len(val_gt.order)}" in captured.out
    summary = json.loads((tmp_path / "o" / "metrics_summary.json").read_text())
    assert summary["complete"] is False and summary["num_samples"] == len(n_first)


def test_invalid_submission_file_is_a_clear_error(val_dir, val_gt, local_run, tmp_path, capsys):
    sub = json.loads(json.dumps(local_run[0]))
    tok = val_gt.order[3]
    sub["results"][tok][0]["detection_name"] = "cyclist"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(sub))
    code = main(["--shards", str(val_dir), "--predictions", str(path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert f"sample {tok} box 0: detection_name 'cyclist'" in capsys.readouterr().err

    sub["results"][tok][0]["detection_name"] = "car"
    sub["results"][tok] = sub["results"][tok] * (500 // len(sub["results"][tok]) + 1)
    path.write_text(json.dumps(sub))
    code = main(["--shards", str(val_dir), "--predictions", str(path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert f"sample {tok}: {len(sub['results'][tok])} boxes, at most 500" in capsys.readouterr().err

    del sub["results"][tok]
    path.write_text(json.dumps(sub))
    args = ["--shards", str(val_dir), "--predictions", str(path), "--out", str(tmp_path / "o"), "--no-progress",
            "--no-curves", "--pictures", "0"]
    assert main(args) == 2
    assert f"lacks 1 of {len(val_gt.order)} sample tokens, e.g. {tok}" in capsys.readouterr().err
    assert main(args + ["--allow-partial"]) == 0  # scores the others, marked partial
    captured = capsys.readouterr()
    assert f"PARTIAL RESULT: {len(val_gt.order) - 1} of {len(val_gt.order)}" in captured.out
    assert val_gt.samples[tok].key in captured.err


def test_predictions_file_scores_with_devkit_cross_check_and_pictures(
        val_dir, synth_dataroot, local_run, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(local_run[0]))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "data": {"image_size": IMAGE_SIZE}}))
    out = tmp_path / "o"
    code = main(["--shards", str(val_dir / "manifest.json"), "--predictions", str(path), "--config", str(cfg),
                 "--out", str(out), "--dataroot", str(synth_dataroot[0]), "--pictures", "1", "--num-workers", "0",
                 "--no-progress", "--no-curves"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "agrees" in printed and "NDS:" in printed and "Per-class results:" in printed
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["nd_score"] == pytest.approx(local_run[1]["nd_score"], abs=1e-12)
    assert summary["devkit_cross_check"]["max_abs_diff"] < 1e-5
    assert len(list((out / "samples").glob("*_cameras.png"))) == 1
    assert len(list((out / "samples").glob("*_bev.png"))) == 1


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny model saved like a training checkpoint (weights_fp32.pt + config.yaml)."""
    from bev_model import build_model, get_preset

    ckpt = tmp_path_factory.mktemp("ckpt") / "step_00000000"
    ckpt.mkdir()
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    torch.save(model.state_dict(), ckpt / "weights_fp32.pt")
    (ckpt / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"preset": "tiny"}, "data": {"shards": "unused", "image_size": IMAGE_SIZE}}))
    return ckpt


def test_tiny_model_checkpoint_end_to_end_local_and_flaky_http(val_dir, tiny_checkpoint, tmp_path, capsys):
    n = 2  # frame 0 (history reset) and frame 1 (history reused) of the first scene
    common = ["--checkpoint", str(tiny_checkpoint), "--max-samples", str(n), "--no-curves", "--no-progress",
              "--num-workers", "0", "--retry-backoff", "0.01"]
    code = main(["--shards", str(val_dir), "--out", str(tmp_path / "local"), "--pictures", "1"] + common)
    assert code == 0, capsys.readouterr().err
    # the same weights through the eval library (load_model + ModelPredictor) over a flaky server
    model, _ = load_model(tiny_checkpoint)
    predictor = ModelPredictor(model)
    with http_server(val_dir, reset_after_bytes=RESET_AFTER) as url:
        code = main(["--shards", f"{url}/mini_val-{{000000..000001}}.tar", "--out", str(tmp_path / "http"),
                     "--pictures", "0", "--config", str(tiny_checkpoint / "config.yaml")] + common,
                    predictor=predictor)
    assert code == 0, capsys.readouterr().err
    first = load_ground_truth(sorted(val_dir.glob("*.arrow")))
    scene = first.samples[first.order[0]].scene_token
    assert len(predictor.history) == 1 and predictor.history.past(scene, 1) is not None  # frames fed the history
    local = load_submission(tmp_path / "local" / "results.json")
    remote = load_submission(tmp_path / "http" / "results.json")
    validate_submission(local)
    assert local["meta"]["use_camera"] is True
    assert len(local["results"]) == n and all(0 < len(v) <= 500 for v in local["results"].values())
    assert remote == local
    s_local = json.loads((tmp_path / "local" / "metrics_summary.json").read_text())
    s_http = json.loads((tmp_path / "http" / "metrics_summary.json").read_text())
    assert s_local["num_samples"] == n and s_local["complete"] is True
    assert s_http["nd_score"] == s_local["nd_score"]
    assert len(list((tmp_path / "local" / "samples").glob("*.png"))) == 2


def test_first_stage_scores_the_proposals(val_dir, tiny_checkpoint, tmp_path, capsys):
    """``--stage first`` scores the perspective head's kept proposals (at most ``num_hybrid`` per sample, no
    attributes) and says so in the summary; a model without a first stage is refused by name."""
    from bev_model import build_model, get_preset, model_config_from_dict

    common = ["--checkpoint", str(tiny_checkpoint), "--max-samples", "2", "--no-curves", "--no-progress",
              "--num-workers", "0", "--pictures", "0", "--shards", str(val_dir)]
    assert main(common + ["--out", str(tmp_path / "first"), "--stage", "first"]) == 0, capsys.readouterr().err
    sub = load_submission(tmp_path / "first" / "results.json")
    validate_submission(sub)
    k = get_preset("tiny").head.num_hybrid  # the checkpoint's model is the tiny preset
    assert all(0 < len(v) <= k for v in sub["results"].values())
    # attrs -1 (no attribute predicted): each box gets its class's default
    assert all(box["attribute_name"] == DEFAULT_ATTRIBUTE[box["detection_name"]]
               for v in sub["results"].values() for box in v)
    summary = json.loads((tmp_path / "first" / "metrics_summary.json").read_text())
    assert summary["stage"] == "first" and summary["num_samples"] == 2
    one_stage = tmp_path / "bev_only"
    one_stage.mkdir()
    (one_stage / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"preset": "tiny", "lambda_pers": 0.0}, "data": {"shards": "unused", "image_size": IMAGE_SIZE}}))
    torch.save(build_model(model_config_from_dict({"preset": "tiny", "lambda_pers": 0.0})).state_dict(),
               one_stage / "weights_fp32.pt")
    code = main([*common[2:], "--checkpoint", str(one_stage), "--out", str(tmp_path / "x"), "--stage", "first"])
    err = capsys.readouterr().err
    assert code != 0 and "--stage first" in err and "lambda_pers=0.0" in err
