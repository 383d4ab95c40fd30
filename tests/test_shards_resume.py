"""A build killed with SIGKILL resumes and yields the same bytes as an uninterrupted build."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shards.build import build_shards

SETTINGS = {"clip_frames": 3, "max_shard_mb": 0.05, "resize": (256, 144), "jpeg_quality": 85}


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def _kill_mid_build(root: Path, out: Path, overwrite: bool) -> bool:
    """Start the CLI build, SIGKILL it once its first shard is complete; True if it was still running."""
    cmd = [sys.executable, "-m", "shards", "build", "--dataroot", str(root), "--version", "v1.0-mini",
           "--split", "mini_train", "--out", str(out), "--clip-frames", "3", "--max-shard-mb", "0.05",
           "--resize", "256x144", "--jpeg-quality", "85"] + (["--overwrite"] if overwrite else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(out.glob("mini_train-*.tar")):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode == -signal.SIGKILL and not (out / "manifest.json").exists()


def test_resume_after_sigkill_gives_identical_checksums(synth_dataroot, tmp_path):
    root, version = synth_dataroot
    ref = build_shards(root, version, "mini_train", tmp_path / "ref", progress=False, **SETTINGS)
    assert ref.num_shards >= 8

    out = tmp_path / "killed"
    killed = any(_kill_mid_build(root, out, overwrite=attempt > 0) for attempt in range(3))
    assert killed, "the build finished before it could be killed"
    done = list(out.glob("mini_train-*.tar"))
    assert 0 < len(done) < ref.num_shards

    # a leftover temp file and a lost sidecar of a finished shard must not matter either
    (out / "mini_train-000099.tar.tmp").write_bytes(b"partial")
    sorted(done)[0].with_suffix(".arrow").unlink()
    resumed = build_shards(root, version, "mini_train", out, progress=False, **SETTINGS)
    assert resumed == ref
    assert _digests(out) == _digests(tmp_path / "ref")

    # rerunning a complete build changes nothing
    again = build_shards(root, version, "mini_train", out, progress=False, **SETTINGS)
    assert again == ref and _digests(out) == _digests(tmp_path / "ref")


def test_relative_and_absolute_dataroot_are_the_same_build(synth_dataroot, tmp_path, monkeypatch):
    """A dataroot named relatively, then absolutely (or from another working directory), is one build: the
    second call finds the finished shards instead of refusing them as 'built differently'."""
    root, version = synth_dataroot
    out = tmp_path / "out"
    monkeypatch.chdir(root.parent)
    first = build_shards(Path(root.name), version, "mini_val", out, progress=False, **SETTINGS)
    before = _digests(out)
    monkeypatch.chdir(tmp_path)
    again = build_shards(root.resolve(), version, "mini_val", out, progress=False, **SETTINGS)
    assert again.plan_digest == first.plan_digest
    assert _digests(out) == before
