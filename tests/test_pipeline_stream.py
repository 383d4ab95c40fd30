"""Streaming semantics: windows, eval order, rank/worker split with equal batch counts, resume, URL forms."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline import LoaderConfig, build_loader
from pipeline.faults import LoaderError
from pipeline.urls import ShardURLError, expand_shard_urls, read_bytes
from pipeline.windows import clip_windows, find_clips, resampled_shards, shard_windows, shuffled_windows

SMALL = dict(image_size=(32, 80))


def test_windows_flag_missing_previous_frames_and_fill_nearest():
    scenes = ["a"] * 4 + ["b"] * 3
    fi = np.array([0, 1, 2, 3, 0, 1, 2])
    clips = find_clips(scenes, fi)
    assert clips == [[0, 1, 2, 3], [4, 5, 6]]
    wins = clip_windows(clips[1], fi, (-2, -1, 0))
    assert wins[0] == ((4, 4, 4), (False, False, True))  # scene start: copies of the current frame
    assert wins[1] == ((4, 4, 5), (False, True, True))  # -2 missing: nearest available is -1
    assert wins[2] == ((4, 5, 6), (True, True, True))
    # a gap in frame_index (skipped frame) is flagged, not bridged
    wins = clip_windows([0, 1], np.array([0, 2]), (-1, 0))
    assert wins[1] == ((1, 1), (False, True))


def test_shuffle_buffer_keeps_windows_whole_and_covers():
    clips = shard_windows(0, ["a"] * 5 + ["b"] * 5, np.array(list(range(5)) * 2), (-1, 0))
    out = shuffled_windows(clips, 3, np.random.default_rng(0))
    assert sorted(w.rows for w in out) == sorted(w.rows for c in clips for w in c)
    assert [w.rows for w in out] != [w.rows for c in clips for w in c]


def _tokens(loader) -> list[str]:
    return [t for b in loader for t in b.sample_token]


def _sidecar_tokens(tar_path: str) -> list[str]:
    from shards.reader import open_sidecar

    return open_sidecar(tar_path[: -len(".tar")] + ".arrow").column("sample_token").to_pylist()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_yields_every_frame_once_in_scene_order(synth_shards, num_workers):
    cfg = LoaderConfig(shards=str(synth_shards["mini_val"]), mode="eval", batch_size=4, offsets=(0,),
                       num_workers=num_workers, **SMALL)
    manifest = json.loads((synth_shards["mini_val"] / "manifest.json").read_text())
    seen, stamps = [], {}
    for b in build_loader(cfg):
        for tok, scene, ts in zip(b.sample_token, b.scene_token, b.timestamp.tolist()):
            seen.append(tok)
            assert ts > stamps.get(scene, -1), "frames of a scene out of time order"
            stamps[scene] = ts
    assert len(seen) == len(set(seen)) == manifest["num_samples"]


def test_two_ranks_two_workers_disjoint_covering_equal_batches(synth_shards):
    shards = synth_shards["mini_train"]
    counts, per_rank = Counter(), []
    for rank in range(2):
        cfg = LoaderConfig(shards=str(shards), batch_size=2, offsets=(-1, 0), num_workers=2, rank=rank,
                           world_size=2, augment=False, **SMALL)
        loader = build_loader(cfg)
        toks = []
        n = 0
        for b in loader:
            n += 1
            toks += b.sample_token
        assert n == len(loader)
        per_rank.append(n)
        counts.update(toks)
    total = json.loads((shards / "manifest.json").read_text())["num_samples"]
    assert per_rank[0] == per_rank[1] == total // 4
    assert max(counts.values()) == 1, "a sample was seen twice"
    assert sum(counts.values()) == 4 * (total // 4)  # covering (all frames when total % 4 == 0)


def test_uneven_shards_still_give_equal_batch_counts(synth_shards):
    shards = sorted(str(p) for p in synth_shards["mini_train"].glob("*.tar"))[:3]  # 3 shards over 2 ranks
    n = []
    for rank in range(2):
        cfg = LoaderConfig(shards=shards, batch_size=2, num_workers=0, rank=rank, world_size=2, augment=False, **SMALL)
        n.append(sum(1 for _ in build_loader(cfg)))
    assert n[0] == n[1] > 0


def test_fewer_shards_than_workers_is_an_error(synth_shards):
    shards = sorted(str(p) for p in synth_shards["mini_train"].glob("*.tar"))[:3]
    cfg = LoaderConfig(shards=shards, num_workers=2, rank=0, world_size=2, **SMALL)
    with pytest.raises(LoaderError, match="3 shard"):
        build_loader(cfg)


def test_resampled_shards_feed_more_workers_than_shards(synth_shards):
    shards = sorted(str(p) for p in synth_shards["mini_train"].glob("*.tar"))[:3]  # 3 shards, 2 ranks x 2 workers
    allowed = set()
    for path in shards:
        allowed |= {k for k in _sidecar_tokens(path)}
    counts = []
    for rank in range(2):
        loader = build_loader(LoaderConfig(shards=shards, batch_size=2, num_workers=2, rank=rank, world_size=2,
                                           resampled=True, augment=False, **SMALL))
        toks = _tokens(loader)
        counts.append((len(toks), 2 * len(loader)))
        assert set(toks) <= allowed
    assert counts[0] == counts[1] and counts[0][0] == counts[0][1] > 0


def test_resampled_draws_are_per_worker_reproducible_and_distinct_within_a_pass():
    a = resampled_shards(10, seed=0, epoch=0, cycle=0, rank=0, worker=0, count=4)
    assert a == resampled_shards(10, seed=0, epoch=0, cycle=0, rank=0, worker=0, count=4)
    assert len(set(a)) == 4 and all(0 <= i < 10 for i in a)
    others = {tuple(resampled_shards(10, 0, 0, 0, rank=r, worker=w, count=4)) for r in range(2) for w in range(2)}
    assert len(others) > 1  # workers draw independently
    assert resampled_shards(1, 0, 0, 0, 0, 0, count=3) == [0, 0, 0]  # fewer shards than a pass: with replacement


def test_resume_continues_with_unseen_data(synth_shards):
    base = dict(shards=str(synth_shards["mini_train"]), batch_size=2, offsets=(-1, 0), num_workers=2, seed=3,
                augment=False, **SMALL)
    full = _tokens(build_loader(LoaderConfig(**base)))
    first = build_loader(LoaderConfig(**base))
    it = iter(first)
    head = [t for _ in range(5) for t in next(it).sample_token]
    state = first.state_dict()
    del it
    resumed = build_loader(LoaderConfig(**base))
    resumed.load_state_dict(state)
    tail = _tokens(resumed)
    assert not set(head) & set(tail), "resume repeated data"
    assert head + tail == full
    assert resumed.epoch == state["epoch"] + 1
    nxt = _tokens(resumed)  # the next epoch is a full, different permutation
    assert sorted(nxt) == sorted(full) and nxt != full


def test_url_forms_are_equivalent(synth_shards):
    d = synth_shards["mini_val"]
    tars = sorted(p.name for p in d.glob("*.tar"))
    stem = tars[0].rsplit("-", 1)[0]
    forms = [str(d), str(d / "manifest.json"), [str(d / t) for t in tars], [f"file://{d / t}" for t in tars],
             f"{d}/{stem}-{{000000..{len(tars) - 1:06d}}}.tar"]
    urls = [[s.url.replace("file://", "") for s in expand_shard_urls(f)] for f in forms]
    assert all(u == urls[0] for u in urls)
    assert expand_shard_urls(str(d))[0].num_samples is not None


def test_pipe_urls_are_refused():
    with pytest.raises(ShardURLError, match="allow_pipe"):
        expand_shard_urls("pipe:curl -s http://example.invalid/x.tar")
    with pytest.raises(ShardURLError, match="scheme"):
        expand_shard_urls("gopher://x/y.tar")


def test_each_frame_crosses_to_the_main_process_once(synth_shards):
    """T=3 windows share frames: every decoded frame is sent once, and the main process's cache stays
    small (frames are released after their clip's last window; the Loader drops the rest at epoch end)."""
    import torch

    from pipeline.transport import FrameCache

    cfg = LoaderConfig(shards=str(synth_shards["mini_train"]), batch_size=2, offsets=(-2, -1, 0), num_workers=2,
                       augment=False, shuffle_buffer=4, epoch_samples=96, **SMALL)  # two passes
    loader = build_loader(cfg)
    cache = FrameCache(torch.device("cpu"))
    sent, windows, peak, buffers = Counter(), 0, 0, 0
    for raw in loader.host_batches():
        sent.update((raw.worker, f) for f in raw.frames.new_ids)
        buffers += len(raw.frames.slot_buffers or {})
        windows += raw.batch_size
        imgs = cache.assemble(raw)
        assert imgs.shape[:3] == (2, 3, 6)
        peak = max(peak, len(cache))
    assert max(sent.values()) == 1
    assert sum(sent.values()) == windows  # every pass decodes each frame once: one new frame per window
    assert len(cache) <= 2 * 2 * 3  # at most the last batch of each worker
    assert buffers < sum(sent.values())  # shared-memory slots are reused
    assert peak < sum(sent.values()) // 2  # frames are released during the pass, not held to its end


def test_pipe_urls_are_read_when_allowed(synth_shards):
    """``pipe:CMD`` with allow_pipe: the tar is CMD's stdout, the sidecar the same command with .arrow."""
    d = synth_shards["mini_val"]
    tars = sorted(p.name for p in d.glob("*.tar"))
    base = dict(mode="eval", batch_size=2, offsets=(-1, 0), num_workers=0, **SMALL)
    local = list(build_loader(LoaderConfig(shards=[str(d / t) for t in tars], **base)))
    piped = list(build_loader(LoaderConfig(shards=[f"pipe:cat {d / t}" for t in tars], allow_pipe=True, **base)))
    assert [b.sample_token for b in piped] == [b.sample_token for b in local]
    assert all(np.array_equal(a.imgs.numpy(), b.imgs.numpy()) for a, b in zip(piped, local))
    with pytest.raises(OSError, match="pipe:exit 3 x.arrow: command exited with status 3"):
        read_bytes("pipe:exit 3 x.arrow")
