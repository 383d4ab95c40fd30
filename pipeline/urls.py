"""Shard URLs: expansion (braces, manifests), and opening local, HTTP(S), S3 and ``pipe:`` objects.

Remote reads go through :class:`RangeReader`, a file-like object that re-requests the rest
of the object with an HTTP ``Range`` (or S3 ``Range``) from the last byte it delivered when a
connection errors, resets or ends early, with exponential backoff. A resumed request must
continue the same object: HTTP sends ``If-Range`` with the first response's ETag (or
Last-Modified), S3 ``IfMatch`` with its ETag, and the reply's ``Content-Range`` must start at
the byte asked for; otherwise :class:`ObjectChangedError` (not retried) names the URL. Whole
small objects (sidecars, manifests) are fetched with :func:`read_bytes`; local files are
memory-mapped.

Manifest entries are plain file names in the manifest's own directory
(:func:`check_member_name`): a manifest can never point the loader at a local path, ``../``,
another host or a ``pipe:`` command.

``pipe:CMD`` (only with ``allow_pipe``) runs ``CMD`` in a shell and reads the shard from its
stdout (webdataset's convention); the sidecar is read by the same command with its last
``.tar`` replaced by ``.arrow``.
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import braceexpand

from shards.errors import ShardFormatError
from shards.manifest import check_member_name as _check_member_name

from .faults import LoaderError

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("http", "https", "s3")


class ShardURLError(LoaderError, ValueError):
    """A shard URL cannot be used (refused scheme, unknown scheme, unreadable manifest, bad
    manifest entry, nothing matched)."""


class ObjectChangedError(Exception):
    """A resumed remote read would not continue the same bytes (the object was replaced, or the
    server answered a Range request from another byte). Never retried."""


@dataclass(frozen=True)
class ShardSpec:
    """One shard: the tar URL, its sidecar URL, and what its manifest knows (sample count, sha256)."""

    url: str
    sidecar_url: str
    num_samples: int | None = None
    sha256: str | None = None
    """Hex sha256 of the tar from the manifest (``verify_checksums``), None when unknown."""
    sidecar_sha256: str | None = None


@dataclass(frozen=True)
class IOOptions:
    """How remote objects are opened."""

    s3_endpoint_url: str | None = None
    timeout: float = 30.0
    max_retries: int = 5
    retry_backoff: float = 0.2


def scheme_of(url: str) -> str:
    """"" for local paths, else the URL scheme ("file", "http", "https", "s3", "pipe")."""
    if url.startswith("pipe:"):
        return "pipe"
    p = urlparse(url)
    return p.scheme if len(p.scheme) > 1 else ""


def local_path(url: str) -> Path:
    """Local path of a ``file://`` URL or a plain path."""
    return Path(urlparse(url).path) if url.startswith("file://") else Path(url)


def is_remote(url: str) -> bool:
    return scheme_of(url) in REMOTE_SCHEMES



def check_member_name(name: object, manifest_url: str) -> str:
    """Return ``name`` if it is a plain file name in the manifest's directory, else raise
    :class:`ShardURLError` naming the manifest and the entry (the rule is
    :func:`shards.manifest.check_member_name`, shared with the shards tools).
    """
    try:
        return _check_member_name(name, manifest_url)
    except ShardFormatError as e:
        raise ShardURLError(str(e)) from None


def join_url(base: str, name: str) -> str:
    """The plain file name ``name`` in the directory of ``base`` (a path or URL); see
    :func:`check_member_name` (raises :class:`ShardURLError` for anything else)."""
    check_member_name(name, base)
    if scheme_of(base) in ("", "file"):
        return str(local_path(base).parent / name)
    return base.rsplit("/", 1)[0] + "/" + name


def sidecar_url(tar_url: str) -> str:
    """The sidecar of a shard: ``.tar`` -> ``.arrow`` (for ``pipe:``, the command's last ``.tar``)."""
    if scheme_of(tar_url) == "pipe":
        i = tar_url.rfind(".tar")
        if i < 0:
            raise ShardURLError(f"pipe: URL {tar_url!r} names no .tar (its sidecar command replaces the last "
                                "'.tar' by '.arrow')")
        return tar_url[:i] + ".arrow" + tar_url[i + len(".tar"):]
    if not tar_url.endswith(".tar"):
        raise ShardURLError(f"shard URL {tar_url!r} does not end with .tar")
    return tar_url[: -len(".tar")] + ".arrow"


def expand_shard_urls(spec: str | list[str], *, allow_pipe: bool = False,
                      io_opts: IOOptions | None = None) -> list[ShardSpec]:
    """Expand a shard specification into shards, in order.

    ``spec``: a URL/path, a brace pattern (``train-{000000..000009}.tar``), a list of those,
    a directory (its ``manifest.json`` is used) or a manifest path/URL (``*.json``).
    ``pipe:`` URLs raise :class:`ShardURLError` unless ``allow_pipe``. An unreadable manifest
    raises :class:`ShardURLError` naming it.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[ShardSpec] = []
    for item in items:
        for url in braceexpand.braceexpand(str(item)):
            sch = scheme_of(url)
            if sch == "pipe":
                if not allow_pipe:
                    raise ShardURLError(f"refusing pipe: URL {url!r} (set allow_pipe=True to run shell commands)")
                out.append(ShardSpec(url, sidecar_url(url)))
                continue
            if sch not in ("", "file") + REMOTE_SCHEMES:
                raise ShardURLError(f"unsupported URL scheme {sch!r} in {url!r}")
            if sch in ("", "file") and local_path(url).is_dir():
                url = str(local_path(url) / "manifest.json")
            if url.endswith(".json"):
                out.extend(_from_manifest(url, io_opts or IOOptions()))
            else:
                out.append(ShardSpec(url, sidecar_url(url)))
    if not out:
        raise ShardURLError(f"no shards in {spec!r}")
    return out


def _from_manifest(url: str, io_opts: IOOptions) -> list[ShardSpec]:
    try:
        manifest = json.loads(bytes(read_bytes(url, io_opts)))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise ShardURLError(f"cannot read manifest {url}: {type(e).__name__}: {e}") from e
    if not isinstance(manifest, dict):
        raise ShardURLError(f"manifest {url} is not a JSON object")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ShardURLError(f"manifest {url} lists no shards")
    out = []
    for i, entry in enumerate(shards):
        if isinstance(entry, dict):
            name = entry.get("tar") or entry.get("name") or entry.get("url")
        else:
            name = entry
        if not isinstance(name, str):
            raise ShardURLError(f"manifest {url}: shards[{i}] has no tar name ({entry!r})")
        if not name.endswith(".tar"):
            name = name + ".tar"
        d = entry if isinstance(entry, dict) else {}
        n = d.get("num_samples", d.get("samples"))
        tar = join_url(url, name)
        side = d.get("sidecar")
        sha, side_sha = d.get("sha256"), d.get("sidecar_sha256")
        out.append(ShardSpec(tar, join_url(url, side) if side is not None else sidecar_url(tar),
                             int(n) if n is not None else None, sha if isinstance(sha, str) else None,
                             side_sha if isinstance(side_sha, str) else None))
    return out


# --------------------------------------------------------------------------- remote reading


_RETRYABLE = (OSError, EOFError, ConnectionError, TimeoutError, urllib.error.URLError)


def _is_retryable(e: BaseException) -> bool:
    if isinstance(e, ObjectChangedError):
        return False
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code == 429
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError")
        if isinstance(e, BotoCoreError):
            return True
    except ImportError:  # pragma: no cover
        pass
    import http.client

    return isinstance(e, _RETRYABLE + (http.client.HTTPException,))


class RangeReader(io.RawIOBase):
    """Read-only stream over a remote object that survives connection errors.

    ``opener(offset) -> (stream, total_size_or_None)`` starts a response body at ``offset``.
    A failed or short read re-opens at the current offset (``Range: bytes=offset-``) after
    ``backoff * 2**k`` seconds; after ``max_retries`` consecutive failures the error is raised,
    naming the URL and offset.
    """

    def __init__(self, url: str, opener: Callable[[int], tuple[Any, int | None]], *, max_retries: int = 5,
                 backoff: float = 0.2):
        super().__init__()
        self.url = url
        self._opener = opener
        self._max_retries = max_retries
        self._backoff = backoff
        self._pos = 0
        self._size: int | None = None
        self._body: Any = None
        self.retries = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _reopen(self) -> None:
        self._close_body()
        self._body, size = self._opener(self._pos)
        if size is not None:
            self._size = size

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 - closing a broken stream
                pass
            self._body = None

    def readinto(self, b) -> int:
        want = len(b)
        if want == 0 or (self._size is not None and self._pos >= self._size):
            return 0
        failures = 0
        while True:
            try:
                if self._body is None:
                    self._reopen()
                    if self._size is not None and self._pos >= self._size:
                        return 0
                data = self._body.read(want)
                if not data:
                    if self._size is not None and self._pos < self._size:
                        raise EOFError(f"{self.url}: connection ended at byte {self._pos} of {self._size}")
                    return 0
                n = len(data)
                b[:n] = data
                self._pos += n
                return n
            except Exception as e:  # noqa: BLE001 - classified below
                self._close_body()
                if not _is_retryable(e) or failures >= self._max_retries:
                    raise OSError(f"reading {self.url} at byte {self._pos} failed after {failures} retries: "
                                  f"{type(e).__name__}: {e}") from e
                delay = self._backoff * (2 ** failures)
                failures += 1
                self.retries += 1
                log.warning("retrying %s at byte %d in %.2fs after %s: %s", self.url, self._pos, delay,
                            type(e).__name__, e)
                time.sleep(delay)

    def close(self) -> None:
        self._close_body()
        super().close()


def _range_start(content_range: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes a-b/n`` header, None when absent or unparsable."""
    m = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def _http_opener(url: str, timeout: float):
    first: dict[str, str] = {}  # validator of the first response: {"If-Range": ETag or Last-Modified}

    def opener(offset: int):
        headers = {}
        if offset:
            headers = {"Range": f"bytes={offset}-", **first}
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        if not offset and not first:
            etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
            if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
                first["If-Range"] = etag
            elif modified:
                first["If-Range"] = modified
        size = None
        cr = resp.headers.get("Content-Range")
        if offset:
            if resp.status != 206 and first:
                resp.close()
                raise ObjectChangedError(f"{url} changed while it was read: the resumed request at byte {offset} "
                                         f"with If-Range {first['If-Range']} got the whole object "
                                         f"(status {resp.status})")
            start = _range_start(cr)
            if resp.status == 206 and start != offset:
                resp.close()
                raise ObjectChangedError(f"{url}: asked for bytes from {offset}, the 206 reply's Content-Range "
                                         f"{cr!r} starts at {start}")
        if cr and "/" in cr and not cr.endswith("*"):
            size = int(cr.rsplit("/", 1)[1])
        elif resp.headers.get("Content-Length") is not None:
            if offset and resp.status != 206:
                resp.close()
                raise OSError(f"{url}: server ignored the Range request (status {resp.status})")
            size = offset + int(resp.headers["Content-Length"])
        return resp, size

    return opener


_S3_CLIENTS: dict[tuple[str | None, float], Any] = {}


def s3_client(endpoint_url: str | None, timeout: float = 30.0):
    """A boto3 S3 client (one per process and endpoint); credentials from the environment."""
    key = (endpoint_url, timeout)
    if key not in _S3_CLIENTS:
        import boto3
        from botocore.config import Config

        _S3_CLIENTS[key] = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url,
            config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2}))
    return _S3_CLIENTS[key]


def _s3_opener(url: str, opts: IOOptions):
    p = urlparse(url)
    bucket, key = p.netloc, p.path.lstrip("/")

    first: dict[str, str] = {}  # {"IfMatch": ETag of the first response}

    def opener(offset: int):
        client = s3_client(opts.s3_endpoint_url, opts.timeout)
        kw = {"Range": f"bytes={offset}-", **first} if offset else {}
        resp = client.get_object(Bucket=bucket, Key=key, **kw)
        if not offset and not first and resp.get("ETag"):
            first["IfMatch"] = resp["ETag"]
        size = None
        cr = resp.get("ContentRange")
        if offset and _range_start(cr) != offset:
            resp["Body"].close()
            raise ObjectChangedError(f"{url}: asked for bytes from {offset}, the reply's ContentRange {cr!r} "
                                     f"starts at {_range_start(cr)}")
        if cr and "/" in cr:
            size = int(cr.rsplit("/", 1)[1])
        elif resp.get("ContentLength") is not None:
            size = offset + int(resp["ContentLength"])
        return resp["Body"], size

    return opener


def open_stream(url: str, opts: IOOptions | None = None) -> IO[bytes]:
    """Open a shard for sequential reading (buffered). Remote objects retry with Range."""
    opts = opts or IOOptions()
    sch = scheme_of(url)
    if sch in ("", "file"):
        return open(local_path(url), "rb")
    if sch == "pipe":
        return io.BufferedReader(PipeReader(url), buffer_size=1 << 20)
    if sch in ("http", "https"):
        raw = RangeReader(url, _http_opener(url, opts.timeout), max_retries=opts.max_retries,
                          backoff=opts.retry_backoff)
    elif sch == "s3":
        raw = RangeReader(url, _s3_opener(url, opts), max_retries=opts.max_retries, backoff=opts.retry_backoff)
    else:
        raise ShardURLError(f"cannot open {url!r}: unsupported scheme {sch!r}")
    return io.BufferedReader(raw, buffer_size=1 << 20)


class PipeReader(io.RawIOBase):
    """stdout of ``pipe:CMD`` (run by the shell); closing it waits for the command and raises
    ``OSError`` naming the command when it failed."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self._proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._proc.stdout.readinto(b)

    def close(self) -> None:
        if self.closed:
            return
        while self._proc.stdout.read(1 << 20):  # drain, so the command does not fail on a closed pipe
            pass
        self._proc.stdout.close()
        rc = self._proc.wait()
        super().close()
        if rc != 0:
            raise OSError(f"{self.url}: command exited with status {rc}")


def read_bytes(url: str, opts: IOOptions | None = None) -> bytes | memoryview:
    """Whole object: memory-mapped for local files, fetched (with retries) for remote ones."""
    sch = scheme_of(url)
    if sch in ("", "file"):
        path = local_path(url)
        with open(path, "rb") as f:
            if path.stat().st_size == 0:
                return b""
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    with open_stream(url, opts) as f:
        return f.read()
