"""Streaming input: shard URLs -> temporal windows -> decode (DALI / CPU) -> Kornia augmentation -> Batch."""

from shards.contracts.batch import Batch

from .config import BevAugConfig, ImageAugConfig, LoaderConfig
from .loader import Loader, build_loader

__all__ = ["Batch", "BevAugConfig", "ImageAugConfig", "Loader", "LoaderConfig", "build_loader"]
