"""Streaming input: shard URLs -> temporal windows -> decode (DALI / CPU) -> Kornia augmentation -> Batch."""

from shards.contracts.batch import Batch

from .config import BevAugConfig, ImageAugConfig, LoaderConfig
from .faults import LoaderError
from .loader import Loader, build_loader
from .urls import ShardURLError

__all__ = ["Batch", "BevAugConfig", "ImageAugConfig", "Loader", "LoaderConfig", "LoaderError", "ShardURLError",
           "build_loader"]
