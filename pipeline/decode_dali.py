"""DALI JPEG decoding fed by ``fn.external_source`` (the JPEG bytes come from our tar stream).

On a GPU the decoder runs ``device="mixed"`` (nvJPEG) and returns CUDA tensors; without one
the pipeline is built with ``device_id=None`` and CPU operators only
(``fn.decoders.image`` + ``fn.resize``). Crop and resize follow
:func:`pipeline.decode_cpu.decode_matrix` exactly: the region of interest is given in source
pixels (``roi_start``/``roi_end``, edges), resized with the half-pixel convention.
"""

from __future__ import annotations

import numpy as np

from .decode_cpu import CameraDecodeError, DecodeError, check_jpeg_sizes, crop_pixels


def cuda_usable() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


class DaliDecoder:
    """Decode lists of JPEGs with a DALI pipeline (built lazily, once per process).

    ``decode_many(datas, src_whs) -> list of [H, W, 3] uint8`` (numpy on CPU, torch CUDA
    tensors when ``gpu``) or the exception for a bad image.
    """

    def __init__(self, out_hw: tuple[int, int], crop_box: tuple[float, float, float, float], *,
                 gpu: bool = False, max_batch: int = 6, num_threads: int = 1, device_id: int | None = None):
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.crop_box = tuple(crop_box)
        self.gpu = gpu
        self.max_batch = max_batch
        self.num_threads = num_threads
        self.device_id = device_id
        self._pipe = None

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        h, w = self.out_hw
        gpu = self.gpu
        dev_id = (self.device_id or 0) if gpu else None

        @pipeline_def(batch_size=self.max_batch, num_threads=self.num_threads, device_id=dev_id,
                      prefetch_queue_depth=1, exec_dynamic=True)
        def pipe():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, device="cpu")
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, device="cpu")
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, device="cpu")
            img = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
            return fn.resize(img, size=[h, w], roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                             interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.UINT8)

        p = pipe()
        p.build()
        return p

    def _run(self, datas: list[bytes], src_whs: list[tuple[int, int]]):
        if self._pipe is None:
            self._pipe = self._build()
        starts, ends = [], []
        for sw, sh in src_whs:
            x0, y0, x1, y1 = crop_pixels(int(sw), int(sh), self.crop_box)
            starts.append(np.array([y0, x0], np.float32))
            ends.append(np.array([y1, x1], np.float32))
        self._pipe.feed_input("jpegs", [np.frombuffer(d, np.uint8) for d in datas])
        self._pipe.feed_input("roi_start", starts)
        self._pipe.feed_input("roi_end", ends)
        (out,) = self._pipe.run()
        return self._to_arrays(out)

    def _to_arrays(self, out) -> list:
        if not self.gpu:
            return [np.array(out[i]) for i in range(len(out))]
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = torch.empty((len(out),) + self.out_hw + (3,), dtype=torch.uint8, device=f"cuda:{self.device_id or 0}")
        feed_ndarray(out.as_tensor(), t, cuda_stream=torch.cuda.current_stream())
        return list(t.unbind(0))

    def check_sizes(self, datas: list[bytes], src_whs: list[tuple[int, int]]) -> list[DecodeError | None]:
        """Header-only size check of every image (SOF size vs sidecar) before DALI sees the data."""
        return check_jpeg_sizes(datas, src_whs)

    def decode_frame(self, datas: list[bytes], src_whs: list[tuple[int, int]], out: np.ndarray) -> None:
        """Decode the C camera images of one frame (one pipeline run) into ``out`` ``[C, H, W, 3]`` uint8.

        Raises:
            CameraDecodeError: for the first camera that fails (its index and cause).
        """
        for c, o in enumerate(self.decode_many(datas, src_whs)):
            if isinstance(o, Exception):
                raise CameraDecodeError(c, o)
            out[c] = o

    def decode_many(self, datas: list[bytes], src_whs: list[tuple[int, int]]) -> list:
        errs = self.check_sizes(datas, src_whs)
        out: list = list(errs)
        good = [i for i, e in enumerate(errs) if e is None]
        for s in range(0, len(good), self.max_batch):
            idx = good[s:s + self.max_batch]
            try:
                arrs = self._run([datas[i] for i in idx], [src_whs[i] for i in idx])
                for i, a in zip(idx, arrs):
                    out[i] = a
            except Exception:  # noqa: BLE001 - find the bad image one at a time
                self._pipe = None
                for i in idx:
                    try:
                        out[i] = self._run([datas[i]], [src_whs[i]])[0]
                    except Exception as e:  # noqa: BLE001
                        self._pipe = None
                        out[i] = DecodeError(f"DALI: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return out

    def decode(self, data: bytes, src_wh: tuple[int, int]):
        r = self.decode_many([data], [src_wh])[0]
        if isinstance(r, Exception):
            raise r
        return r
