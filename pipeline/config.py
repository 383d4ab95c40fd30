"""Typed configuration of the streaming loader (load with ``shards.typed_config``).

    cfg = load_config(LoaderConfig, "configs/tiny.yaml", overrides=["batch_size=2"])

Geometry of the decode stage: ``crop_box`` (fractions of the source image, left, top,
right, bottom) is cut out of every source image and resized to ``image_size`` (H, W).
The default keeps the lower 1600x640 band of a 1600x900 nuScenes image (BEVFormer v2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shards.typed_config import ConfigError

LOWER_BAND = (0.0, 260.0 / 900.0, 1.0, 1.0)
"""``crop_box`` keeping the lower 640 rows of a 900-row image (BEVFormer v2 crop)."""


@dataclass
class ImageAugConfig:
    """Random image-space augmentation (one parameter set per window, shared by its T frames)."""

    resize_range: tuple[float, float] = (1.0, 1.0)
    """Random zoom factor range; the result is cropped/padded back to ``image_size``."""
    rotate_deg: tuple[float, float] = (0.0, 0.0)
    """Random in-plane rotation about the image centre, degrees."""
    flip_prob: float = 0.0
    """Probability of a horizontal flip (x' = W - 1 - x)."""
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    """Photometric jitter magnitudes (factor ranges 1 +- value; hue in turns of the circle * 0.5)."""
    per_camera: bool = True
    """Sample geometric parameters independently per camera (else one set for all cameras)."""


@dataclass
class BevAugConfig:
    """Random BEV (ego-frame) augmentation, one matrix B per window."""

    rotate_deg: tuple[float, float] = (0.0, 0.0)
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip_x_prob: float = 0.0
    """Probability of x -> -x (front/back flip)."""
    flip_y_prob: float = 0.0
    """Probability of y -> -y (left/right flip)."""


@dataclass
class LoaderConfig:
    """Everything ``pipeline.build_loader`` needs."""

    shards: str | list[str] = ""
    """Local paths, file://, http(s)://, s3:// URLs, brace patterns, or a manifest.json path/URL."""
    mode: Literal["train", "eval"] = "train"
    batch_size: int = 1
    offsets: tuple[int, ...] = (0,)
    """Frame offsets of a window in keyframes, increasing, ending with 0 (the current frame)."""
    image_size: tuple[int, int] = (320, 800)
    """Decoded image size (H, W), before random augmentation (which keeps the size)."""
    crop_box: tuple[float, float, float, float] = LOWER_BAND
    """Region of the source image kept, as fractions (left, top, right, bottom)."""
    decoder: Literal["cpu", "dali"] = "cpu"
    dali_device: Literal["auto", "cpu", "gpu"] = "auto"
    """DALI decode device: "gpu" uses nvJPEG (device="mixed"), "auto" picks gpu when CUDA works."""
    device: str = "cpu"
    """Device of the returned batches (and of the Kornia augmentation)."""
    num_workers: int = 2
    prefetch_factor: int = 2
    pin_memory: bool | None = None
    """Unused since frames travel in reusable shared-memory slots copied once to the device (kept for
    config compatibility)."""
    shuffle_shards: bool = True
    resampled: bool = False
    """Train: every worker draws its own shards with replacement across workers and passes (webdataset's
    ``resampled``), so there may be fewer shards than ranks x workers; an epoch stays ``epoch_samples``."""
    shuffle_buffer: int = 32
    """Shuffle buffer size in windows (train); whole clips enter it, windows leave it whole."""
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    """None: from RANK/WORLD_SIZE or torch.distributed (webdataset's pytorch_worker_info)."""
    epoch_samples: int | None = None
    """Total windows per epoch over all ranks (train); None: the number of frames in the shards."""
    augment: bool = True
    image_aug: ImageAugConfig = field(default_factory=ImageAugConfig)
    bev_aug: BevAugConfig = field(default_factory=BevAugConfig)
    load_points: bool = False
    keep_ignored_labels: bool = False
    """Keep boxes whose label is -1 (non-detection categories); off by default."""
    allow_pipe: bool = False
    """Accept ``pipe:CMD`` shard URLs (CMD runs in a shell; its stdout is the tar, the same command with
    the last ``.tar`` replaced by ``.arrow`` gives the sidecar)."""
    verify_checksums: bool | None = None
    """Check each tar (while it streams, before any of its samples is used) and sidecar against the
    manifest's sha256; a mismatching tar is a bad shard (its samples counted and skipped). None: on for
    remote (HTTP/S3) shards listed by a manifest. True needs a manifest with checksums."""
    verify_spool_mb: float = 256.0
    """A verified tar is held in memory up to this size while it is hashed (beyond: a temporary file)."""
    s3_endpoint_url: str | None = None
    """S3 endpoint (e.g. MinIO); credentials come from the usual AWS environment/config."""
    http_timeout: float = 30.0
    max_retries: int = 5
    retry_backoff: float = 0.2
    """Seconds before the first retry; doubles every retry."""
    max_error_rate: float = 0.02
    """Stop with an error when skipped samples exceed this fraction of samples read
    (checked once ``error_grace`` samples have been read, and at every shard end)."""
    error_grace: int = 50

    def validate(self) -> None:
        if isinstance(self.shards, str) and not self.shards:
            raise ConfigError("config key 'shards': no shard URLs given")
        if self.batch_size < 1:
            raise ConfigError(f"config key 'batch_size': must be >= 1, got {self.batch_size}")
        offs = tuple(self.offsets)
        if not offs or offs[-1] != 0 or any(b <= a for a, b in zip(offs, offs[1:])):
            raise ConfigError(f"config key 'offsets': must increase strictly and end with 0, got {offs}")
        if self.num_workers < 0:
            raise ConfigError(f"config key 'num_workers': must be >= 0, got {self.num_workers}")
        left, top, right, bottom = self.crop_box
        if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
            raise ConfigError(f"config key 'crop_box': need 0 <= left < right <= 1 and 0 <= top < bottom <= 1, "
                              f"got {self.crop_box}")
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ConfigError(f"config key 'image_size': must be positive, got {self.image_size}")
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError(f"config key 'max_error_rate': must be in [0, 1], got {self.max_error_rate}")

    @property
    def T(self) -> int:  # noqa: N802 - the usual name of the time dimension
        return len(self.offsets)
