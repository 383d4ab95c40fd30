"""The :class:`Decoder` protocol of the worker side, and the choice of decoder from the config.

Two implementations: :class:`pipeline.decode_cpu.CpuDecoder` (PIL, DCT-domain downscale) and
:class:`pipeline.decode_dali.DaliDecoder` (DALI on CPU in the workers, nvJPEG in the main process).
A worker either decodes the frames itself (``decode_frame`` into a shared-memory slot) or, when
the main process decodes on the GPU, only checks their JPEG headers (``check_sizes``) and sends
the bytes; both go through this protocol.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from shards.conventions import CAMERAS

from .config import LoaderConfig
from .decode_cpu import CpuDecoder, DecodeError
from .faults import LoaderError


class Decoder(Protocol):
    """Decodes the C camera JPEGs of one frame to ``out_hw`` (crop ``crop_box``, then resize)."""

    out_hw: tuple[int, int]
    """Output (H, W) of every decoded image."""

    def check_sizes(self, datas: list[bytes], src_whs: list[tuple[int, int]]) -> list[DecodeError | None]:
        """Header-only check of every JPEG against the sidecar's ``(width, height)``: the error, or None."""
        ...

    def decode_frame(self, datas: list[bytes], src_whs: list[tuple[int, int]], out: np.ndarray) -> None:
        """Decode C JPEGs into ``out`` ``[C, H, W, 3]`` uint8; raises
        :class:`pipeline.decode_cpu.CameraDecodeError` naming the first camera that fails."""
        ...


def make_decoder(cfg: LoaderConfig) -> Decoder:
    """The decoder of a worker: ``cpu`` (PIL + DCT downscale) or DALI with CPU operators.

    A DALI pipeline is built on the first ``decode_frame``, so a worker that only checks
    headers (GPU decode in the main process) never builds one.
    """
    if cfg.decoder == "cpu":
        return CpuDecoder(cfg.image_size, cfg.crop_box)
    from .decode_dali import DaliDecoder

    return DaliDecoder(cfg.image_size, cfg.crop_box, gpu=False, max_batch=len(CAMERAS))


def dali_on_gpu(cfg: LoaderConfig) -> bool:
    """True when the main process decodes with nvJPEG (the workers then send JPEG bytes)."""
    if cfg.decoder != "dali" or cfg.dali_device == "cpu":
        return False
    from .decode_dali import cuda_usable

    if cfg.dali_device == "gpu" and not cuda_usable():
        raise LoaderError("dali_device='gpu' but CUDA is not available")
    return cuda_usable() and str(cfg.device).startswith("cuda")
