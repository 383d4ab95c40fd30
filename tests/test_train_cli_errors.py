"""``python -m train`` stops with exit code 2 and a message naming the fault, not a traceback."""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_remote_shards_exit_2_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/val/manifest.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "train", "--config", str(ROOT / "configs/demo.yaml"), f"data.shards={url}",
         f"out_dir={tmp_path / 'run'}", "data.max_retries=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert url in r.stderr and "Traceback" not in r.stderr
