"""Decoders: the CPU (PIL + DCT downscale) and DALI CPU backends place pixels where decode_matrix says
and give the same images and identical metadata through the loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import LoaderConfig, build_loader
from pipeline.config import LOWER_BAND
from pipeline.decode_cpu import CpuDecoder, DecodeError, decode_matrix, draft_factor
from pipeline.decode_dali import DaliDecoder


def _jpeg(img: np.ndarray, q: int = 95) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, format="JPEG", quality=q)
    return b.getvalue()


def _centroid(img: np.ndarray) -> np.ndarray:
    m = img.astype(np.float64).mean(-1)
    m = np.where(m > 20, m, 0)
    ys, xs = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    return np.array([(xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()])


@pytest.mark.parametrize("backend", ["cpu", "dali"])
@pytest.mark.parametrize("out_hw", [(320, 800), (160, 400), (640, 1600)])
def test_decoded_pixels_sit_where_decode_matrix_maps_them(backend, out_hw):
    src = np.zeros((900, 1600, 3), np.uint8)
    src[700:716, 1000:1016] = 255  # 16x16 white square, centre (1007.5, 707.5)
    data = _jpeg(src)
    dec = CpuDecoder(out_hw, LOWER_BAND) if backend == "cpu" else DaliDecoder(out_hw, LOWER_BAND)
    out = dec.decode(data, (1600, 900))
    assert out.shape == out_hw + (3,) and out.dtype == np.uint8
    a = decode_matrix(1600, 900, LOWER_BAND, out_hw)
    expect = (a @ np.array([1007.5, 707.5, 1.0]))[:2]
    assert np.abs(_centroid(out) - expect).max() < 0.25


def test_draft_factor_picks_dct_scale():
    assert draft_factor(1600, 640, 800, 320) == 2
    assert draft_factor(1600, 640, 400, 160) == 4
    assert draft_factor(1600, 640, 1600, 640) == 1
    assert draft_factor(1600, 640, 200, 80) == 8


@pytest.mark.parametrize("backend", ["cpu", "dali"])
def test_bad_jpegs_raise(backend):
    img = (np.random.default_rng(0).random((90, 160, 3)) * 255).astype(np.uint8)
    data = _jpeg(img)
    dec = CpuDecoder((32, 80), LOWER_BAND) if backend == "cpu" else DaliDecoder((32, 80), LOWER_BAND)
    for bad, wh in [(data[: len(data) // 2], (160, 90)), (b"not a jpeg at all", (160, 90)), (data, (320, 180))]:
        with pytest.raises(DecodeError):
            dec.decode(bad, wh)
    assert dec.decode(data, (160, 90)).shape == (32, 80, 3)


def _batches(shards, decoder: str, image_size) -> list:
    cfg = LoaderConfig(shards=str(shards), mode="eval", batch_size=3, offsets=(-1, 0), image_size=image_size,
                       decoder=decoder, num_workers=0)
    return list(build_loader(cfg))


@pytest.mark.parametrize("image_size,mean_tol", [((128, 320), 1.0), ((64, 160), 3.0)])
def test_dali_cpu_and_cpu_decoder_agree(synth_shards, image_size, mean_tol):
    """Same images (within JPEG decoder tolerance; DCT-domain downscale vs pixel resize at half size)
    and identical metadata."""
    a = _batches(synth_shards["mini_val"], "cpu", image_size)
    b = _batches(synth_shards["mini_val"], "dali", image_size)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.sample_token == y.sample_token and x.scene_token == y.scene_token
        for f in ("ego2img", "intrinsics", "cam2ego", "img_aug", "bev_aug", "cur_from_prev", "valid_prev",
                  "ego2global", "timestamp"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f
        for f in ("gt_boxes", "gt_labels", "gt_attrs", "gt_num_pts", "gt_visibility"):
            assert all(torch.equal(p, q) for p, q in zip(getattr(x, f), getattr(y, f))), f
        diff = (x.imgs - y.imgs).abs() * 255
        assert diff.mean() < mean_tol, diff.mean()
        assert torch.quantile(diff.flatten()[::97], 0.99) < 8 * mean_tol


@pytest.mark.parametrize("backend", ["cpu", "dali"])
def test_decoder_protocol_checks_sizes_and_names_the_failing_camera(backend):
    """Both decoders implement pipeline.decoder.Decoder: a header-only size check per image, and a
    frame decode into [C, H, W, 3] that names the first camera that fails."""
    from pipeline.decode_cpu import CameraDecodeError
    from pipeline.decoder import Decoder

    img = (np.random.default_rng(1).random((90, 160, 3)) * 255).astype(np.uint8)
    good = _jpeg(img)
    dec: Decoder = CpuDecoder((32, 80), LOWER_BAND) if backend == "cpu" else DaliDecoder((32, 80), LOWER_BAND)
    errs = dec.check_sizes([good, good, b"junk"], [(160, 90), (320, 180), (160, 90)])
    assert errs[0] is None and "sidecar says 320x180" in str(errs[1]) and isinstance(errs[2], DecodeError)
    out = np.zeros((3, 32, 80, 3), np.uint8)
    dec.decode_frame([good] * 3, [(160, 90)] * 3, out)
    assert np.array_equal(out[0], dec.decode(good, (160, 90))) and np.array_equal(out[2], out[0])
    with pytest.raises(CameraDecodeError) as e:
        dec.decode_frame([good, good[: len(good) // 3], good], [(160, 90)] * 3, out)
    assert e.value.camera == 1
