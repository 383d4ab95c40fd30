"""Streaming from a real HTTP server and a real S3-compatible server (moto_server) on loopback gives the
same batches as local files; a server that resets connections mid-shard is survived."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline import LoaderConfig, build_loader
from pipeline.urls import IOOptions, RangeReader, open_stream, read_bytes
from tests.servers import TEST_S3_CREDENTIALS, http_server, s3_server

BASE = dict(mode="eval", batch_size=3, offsets=(-1, 0), image_size=(32, 80), num_workers=2)


def _run(shards, **kw) -> list:
    return list(build_loader(LoaderConfig(shards=shards, **{**BASE, **kw})))


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.sample_token == y.sample_token
        assert torch.equal(x.imgs, y.imgs)
        assert torch.equal(x.ego2img, y.ego2img)
        assert all(torch.equal(p, q) for p, q in zip(x.gt_boxes, y.gt_boxes))


@pytest.fixture(scope="module")
def local_batches(synth_shards):
    return _run(str(synth_shards["mini_val"]))


def test_http_stream_equals_local(synth_shards, local_batches):
    with http_server(synth_shards["mini_val"]) as url:
        _same(_run(f"{url}/manifest.json"), local_batches)


def test_http_reset_mid_shard_is_survived(synth_shards, local_batches, caplog):
    with http_server(synth_shards["mini_val"], reset_after_bytes=70_000) as url:
        tars = sorted(p.name for p in synth_shards["mini_val"].glob("*.tar"))
        # num_workers=0 so the retry warnings are logged in this process
        _same(_run([f"{url}/{t}" for t in tars], num_workers=0, retry_backoff=0.01), local_batches)
    assert any("retrying" in r.getMessage() for r in caplog.records)


def test_range_reader_resumes_from_last_offset(synth_shards):
    tar = sorted(synth_shards["mini_val"].glob("*.tar"))[0]
    data = tar.read_bytes()
    with http_server(synth_shards["mini_val"], reset_after_bytes=12_345) as url:
        f = open_stream(f"{url}/{tar.name}", IOOptions(retry_backoff=0.01))
        got = f.read()
        assert got == data
        raw = f.raw
        assert isinstance(raw, RangeReader) and raw.retries >= 1


def test_http_error_is_clear(synth_shards):
    with http_server(synth_shards["mini_val"]) as url:
        with pytest.raises(OSError, match="404|Not Found|not found"):
            read_bytes(f"{url}/missing.arrow", IOOptions(max_retries=1, retry_backoff=0.01))


def test_s3_stream_equals_local(synth_shards, local_batches, monkeypatch):
    for k, v in TEST_S3_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    with s3_server(synth_shards["mini_val"]) as (endpoint, bucket):
        _same(_run(f"s3://{bucket}/manifest.json", s3_endpoint_url=endpoint), local_batches)
        tars = sorted(p.name for p in synth_shards["mini_val"].glob("*.tar"))
        body = io.BytesIO(bytes(read_bytes(f"s3://{bucket}/{tars[0]}", IOOptions(s3_endpoint_url=endpoint))))
        assert body.getvalue() == (synth_shards["mini_val"] / tars[0]).read_bytes()
