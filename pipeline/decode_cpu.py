"""CPU JPEG decoding with DCT-domain downscaling (PIL ``Image.draft``, libjpeg-turbo).

Every decoder maps a source image to the output through the same crop-and-resize, whose
3x3 matrix on pixel coordinates (integer coordinates at pixel centres) is
:func:`decode_matrix`::

    x' + 0.5 = s_x * (x + 0.5 - x0)      s_x = W_out / (x1 - x0)

(the half-pixel convention of PIL, DALI and OpenCV resizes). When the crop is at least 2, 4
or 8 times the output, libjpeg decodes directly at 1/2, 1/4 or 1/8 scale in the DCT domain
(pixel i of the reduced image covers source pixels [r*i, r*(i+1)), the same convention), and
only the remaining resize is done in pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = 64_000_000


class DecodeError(ValueError):
    """A JPEG could not be decoded or has the wrong size."""


class CameraDecodeError(DecodeError):
    """Decoding one camera of a frame failed: ``camera`` is its index (camera order), ``error`` the cause."""

    def __init__(self, camera: int, error: Exception):
        super().__init__(str(error))
        self.camera = camera
        self.error = error


def check_jpeg_size(data: bytes, src_wh: tuple[int, int]) -> None:
    """Header check (JPEG SOF size against the sidecar's ``(width, height)``) without decoding pixels.

    Raises:
        DecodeError: the data is not a JPEG or its size differs from ``src_wh``.
    """
    sw, sh = int(src_wh[0]), int(src_wh[1])
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise DecodeError(f"{type(e).__name__}: {e}") from e
    if im.format != "JPEG":
        raise DecodeError(f"not a JPEG ({im.format})")
    if im.size != (sw, sh):
        raise DecodeError(f"JPEG is {im.size[0]}x{im.size[1]}, sidecar says {sw}x{sh}")


def check_jpeg_sizes(datas: list[bytes], src_whs: list[tuple[int, int]]) -> list[DecodeError | None]:
    """:func:`check_jpeg_size` of every image: the error, or None where the header matches."""
    errs: list[DecodeError | None] = []
    for d, wh in zip(datas, src_whs):
        try:
            check_jpeg_size(d, wh)
            errs.append(None)
        except DecodeError as e:
            errs.append(e)
    return errs


def crop_pixels(src_w: int, src_h: int, crop_box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Fractional crop box -> integer pixel box (left, top, right, bottom) of the source."""
    left, top, right, bottom = crop_box
    return round(left * src_w), round(top * src_h), round(right * src_w), round(bottom * src_h)


def decode_matrix(src_w: int, src_h: int, crop_box: tuple[float, float, float, float],
                  out_hw: tuple[int, int]) -> np.ndarray:
    """``[3, 3]`` float64 map from source pixel coordinates to decoded pixel coordinates."""
    x0, y0, x1, y1 = crop_pixels(src_w, src_h, crop_box)
    h, w = out_hw
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    return np.array([[sx, 0.0, sx * (0.5 - x0) - 0.5],
                     [0.0, sy, sy * (0.5 - y0) - 0.5],
                     [0.0, 0.0, 1.0]])


def draft_factor(crop_w: int, crop_h: int, out_w: int, out_h: int) -> int:
    """Largest r in (1, 2, 4, 8) with crop / r still >= the output size in both axes."""
    r = 1
    for f in (2, 4, 8):
        if crop_w // f >= out_w and crop_h // f >= out_h:
            r = f
    return r


def rgbx_view(im: Image.Image) -> np.ndarray | None:
    """``[H, W, 4]`` uint8 view (RGBX) of a decoded RGB PIL image's own pixel memory, or None.

    Pillow keeps RGB as 4 bytes per pixel; ``np.asarray(im)`` packs them through ``tobytes``
    (about as slow as the JPEG decode itself at 1600x900). Pillow's Arrow export shares the
    pixel memory instead.
    """
    try:
        import pyarrow as pa

        arr = pa.array(im)  # fixed_size_list<uint8>[4] per pixel, zero-copy
        data = arr.values.buffers()[1]
        w, h = im.size
        return np.frombuffer(data, np.uint8, count=w * h * 4).reshape(h, w, 4)
    except Exception:  # noqa: BLE001 - older Pillow or a multi-block image
        return None


_CV2_SERIAL = False


def pack_rgb(rgbx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``[h, w, 4]`` RGBX (rows may be strided) -> packed ``[h, w, 3]`` RGB (into ``out``).

    OpenCV's SIMD channel drop is ~25x faster than numpy's strided copy here.
    """
    if out is None:
        out = np.empty(rgbx.shape[:2] + (3,), np.uint8)
    try:
        import cv2

        global _CV2_SERIAL
        if not _CV2_SERIAL:
            # OpenCV's thread pool does not survive fork(): a DataLoader worker forked from a
            # process that used it would hang. Run OpenCV serially (this op is memory-bound).
            cv2.setNumThreads(0)
            _CV2_SERIAL = True
        cv2.cvtColor(rgbx, cv2.COLOR_RGBA2RGB, dst=out)
        return out
    except ImportError:  # pragma: no cover
        out[...] = rgbx[..., :3]
        return out


def _to_rgb(im: Image.Image, box: tuple[int, int, int, int] | None, out: np.ndarray | None) -> np.ndarray:
    x = rgbx_view(im)
    if x is None:
        a = np.asarray(im)
        a = a[box[1]:box[3], box[0]:box[2]] if box else a
        if out is None:
            return a
        out[...] = a
        return out
    if box:
        x = x[box[1]:box[3], box[0]:box[2]]
    return pack_rgb(x, out)


class CpuDecoder:
    """PIL decoder: DCT-domain downscale where possible, then crop+resize to the exact size.

    ``decode(jpeg_bytes, (src_w, src_h)) -> [H, W, 3] uint8`` RGB; raises :class:`DecodeError`
    when the data is not a complete JPEG of the expected size.
    """

    def __init__(self, out_hw: tuple[int, int], crop_box: tuple[float, float, float, float],
                 use_draft: bool = True):
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.crop_box = tuple(crop_box)
        self.use_draft = use_draft

    def decode(self, data: bytes, src_wh: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
        """Decode one JPEG; with ``out`` (``[H, W, 3]`` uint8) the pixels are written there."""
        src_w, src_h = int(src_wh[0]), int(src_wh[1])
        h, w = self.out_hw
        x0, y0, x1, y1 = crop_pixels(src_w, src_h, self.crop_box)
        try:
            im = Image.open(io.BytesIO(data))
            if im.format != "JPEG":
                raise DecodeError(f"not a JPEG ({im.format})")
            if im.size != (src_w, src_h):
                raise DecodeError(f"JPEG is {im.size[0]}x{im.size[1]}, sidecar says {src_w}x{src_h}")
            r = draft_factor(x1 - x0, y1 - y0, w, h) if self.use_draft else 1
            if r > 1:
                im.draft("RGB", (-(-src_w // r), -(-src_h // r)))
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
            raise DecodeError(f"{type(e).__name__}: {e}") from e
        if im.size == (-(-src_w // r), -(-src_h // r)):
            r = float(r)  # DCT scaling: reduced pixel i covers source pixels [r*i, r*(i+1))
        else:
            r = src_w / im.size[0]
        box = (x0 / r, y0 / r, x1 / r, y1 / r)
        if all(float(v).is_integer() for v in box) and (box[2] - box[0], box[3] - box[1]) == (w, h):
            bx = tuple(int(v) for v in box)
            arr = _to_rgb(im, bx, out)  # pure crop: no resampling
        else:
            arr = _to_rgb(im.resize((w, h), Image.BILINEAR, box=box, reducing_gap=None), None, out)
        if arr.shape != (h, w, 3):  # pragma: no cover - defensive
            raise DecodeError(f"decoded shape {arr.shape}, expected {(h, w, 3)}")
        return arr

    def check_sizes(self, datas: list[bytes], src_whs: list[tuple[int, int]]) -> list[DecodeError | None]:
        """Header-only size check of every image (see :func:`check_jpeg_size`)."""
        return check_jpeg_sizes(datas, src_whs)

    def decode_frame(self, datas: list[bytes], src_whs: list[tuple[int, int]], out: np.ndarray) -> None:
        """Decode the C camera images of one frame into ``out`` ``[C, H, W, 3]`` uint8, in place.

        Raises:
            CameraDecodeError: at the first camera that fails (its index and cause).
        """
        for c, (d, wh) in enumerate(zip(datas, src_whs)):
            try:
                self.decode(d, wh, out=out[c])
            except DecodeError as e:
                raise CameraDecodeError(c, e) from e

    def decode_many(self, datas: list[bytes], src_whs: list[tuple[int, int]]) -> list[np.ndarray | Exception]:
        out: list[np.ndarray | Exception] = []
        for d, wh in zip(datas, src_whs):
            try:
                out.append(self.decode(d, wh))
            except DecodeError as e:
                out.append(e)
        return out
