"""Which checkpoint a run starts from: fresh, ``--resume auto`` or a path; a fresh start never mixes with an old run."""

from __future__ import annotations

import pytest

from train.checkpoint import COMPLETE, checkpoint_root, resolve_resume


def _checkpoint(out_dir, step: int, complete: bool = True):
    d = checkpoint_root(out_dir) / f"step_{step:08d}"
    d.mkdir(parents=True)
    if complete:
        (d / COMPLETE).write_text("ok\n")
    return d


def test_fresh_start_in_an_empty_or_incomplete_out_dir(tmp_path):
    assert resolve_resume(None, tmp_path / "new") is None
    _checkpoint(tmp_path, 5, complete=False)  # a crash mid-save leaves no complete checkpoint
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None


def test_fresh_start_over_an_earlier_run_is_refused(tmp_path):
    _checkpoint(tmp_path, 200)
    newest = _checkpoint(tmp_path, 400)
    with pytest.raises(FileExistsError, match=r"step_00000400.*--resume auto"):
        resolve_resume(None, tmp_path)
    assert resolve_resume("auto", tmp_path) == newest
    assert resolve_resume(str(newest), tmp_path) == newest


def test_resume_from_an_incomplete_checkpoint_is_named(tmp_path):
    partial = _checkpoint(tmp_path, 7, complete=False)
    with pytest.raises(FileNotFoundError, match="step_00000007"):
        resolve_resume(str(partial), tmp_path)
