"""Real loopback servers for tests: an HTTP file server (with Range and If-Range support, an
ETag and Last-Modified per file, an optional mid-file connection reset, and an optional
misbehaviour that answers Range requests from the wrong byte) and an S3-compatible ``moto_server``.

Both run as subprocesses bound to 127.0.0.1 (port chosen by the OS for HTTP), so forked
DataLoader workers never share a server thread with the test process.

    with http_server(root) as base_url:          # "http://127.0.0.1:PORT"
        ... f"{base_url}/mini_train-000000.tar" ...
    with s3_server(root) as (endpoint_url, bucket):
        ... f"s3://{bucket}/mini_train-000000.tar" with endpoint_url ...

Run directly: ``python -m tests.servers http ROOT [--reset-after-bytes N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TEST_S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""Dummy credentials moto accepts; tests put them in the environment of the code under test."""


# --------------------------------------------------------------------------- HTTP


def etag_of(st: os.stat_result) -> str:
    """Strong ETag of a file version (inode, mtime, size): a replaced file gets a new one."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _make_handler(root: Path, reset_after_bytes: int | None, range_skew: int = 0):
    reset_done: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _resolve(self) -> Path | None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            p = (root / rel).resolve()
            if root.resolve() not in p.parents and p != root.resolve():
                return None
            return p if p.is_file() else None

        def do_HEAD(self):
            self._serve(head=True)

        def do_GET(self):
            self._serve(head=False)

        def _serve(self, head: bool):
            p = self._resolve()
            if p is None:
                self.send_error(404, "not found")
                return
            st = p.stat()
            size = st.st_size
            etag = etag_of(st)
            modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            start, end = 0, size - 1
            status = 200
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if if_range is not None and if_range not in (etag, modified):
                rng = None  # RFC 9110 13.1.5: the representation changed, send all of it
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start = int(a) if a else 0
                end = min(int(b), size - 1) if b else size - 1
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
                if start > 0 and range_skew:  # misbehaving server: replies from another byte
                    start = min(start + range_skew, end)
            length = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            cut = None
            if reset_after_bytes is not None:
                with lock:
                    if str(p) not in reset_done and length > reset_after_bytes:
                        reset_done.add(str(p))
                        cut = reset_after_bytes
            with open(p, "rb") as f:
                f.seek(start)
                sent = 0
                while sent < length:
                    n = min(65536, length - sent)
                    if cut is not None:
                        n = min(n, cut - sent)
                    if n <= 0:
                        break
                    self.wfile.write(f.read(n))
                    sent += n
            if cut is not None:
                # Abort with a TCP RST (SO_LINGER 0) part-way through the body.
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

    return Handler


def _serve_http(root: Path, reset_after_bytes: int | None, range_skew: int = 0) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(root, reset_after_bytes, range_skew))
    srv.daemon_threads = True
    print(f"PORT {srv.server_address[1]}", flush=True)
    srv.serve_forever()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def http_server(root: Path, *, reset_after_bytes: int | None = None, range_skew: int = 0) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a subprocess); yields the base URL.

    Supports ``Range`` and ``If-Range`` (ETag or Last-Modified) requests. With ``reset_after_bytes``
    the first GET of every file that is longer than that is cut with a TCP reset after that many
    body bytes (once per file). With ``range_skew`` a Range request from byte a > 0 is answered
    (206, with a matching Content-Range) from byte a + range_skew.
    """
    cmd = [sys.executable, "-m", "tests.servers", "http", str(Path(root).resolve())]
    if reset_after_bytes is not None:
        cmd += ["--reset-after-bytes", str(int(reset_after_bytes))]
    if range_skew:
        cmd += ["--range-skew", str(int(range_skew))]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"http test server did not start (got {line!r})")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        _stop(proc)


# --------------------------------------------------------------------------- S3 (moto)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(root: Path, bucket: str = "bevstream") -> Iterator[tuple[str, str]]:
    """Run a real ``moto_server`` on 127.0.0.1 with every file under ``root`` uploaded to
    ``bucket`` (keys are paths relative to ``root``); yields ``(endpoint_url, bucket)``.

    Sets nothing global: clients must pass ``endpoint_url`` and the dummy credentials in
    :data:`TEST_S3_CREDENTIALS` (e.g. via ``monkeypatch.setenv``).
    """
    import boto3

    exe = Path(sys.executable).parent / "moto_server"
    cmd = [str(exe) if exe.exists() else "moto_server"]
    last_err: Exception | None = None
    for _attempt in range(3):
        port = _free_port()
        proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        up = False
        while time.time() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    up = True
                    break
            except OSError:
                time.sleep(0.1)
        if not up:
            _stop(proc)
            last_err = RuntimeError(f"moto_server did not start on port {port}")
            continue
        try:
            client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                  aws_secret_access_key="testing", region_name="us-east-1")
            client.create_bucket(Bucket=bucket)
            for p in sorted(Path(root).rglob("*")):
                if p.is_file():
                    client.upload_file(str(p), bucket, p.relative_to(root).as_posix())
            yield endpoint, bucket
            return
        finally:
            _stop(proc)
    raise last_err or RuntimeError("moto_server did not start")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["http"])
    ap.add_argument("root", type=Path)
    ap.add_argument("--reset-after-bytes", type=int, default=None)
    ap.add_argument("--range-skew", type=int, default=0)
    args = ap.parse_args(argv)
    os.chdir(args.root)
    _serve_http(args.root, args.reset_after_bytes, args.range_skew)


if __name__ == "__main__":
    main()
