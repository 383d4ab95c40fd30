"""Image backbone: any timm model through ``features_only``; local weights only, optional frozen stages.

``Backbone(cfg)(images [B, 3, H, W]) -> list of [B, C_i, H / s_i, W / s_i]`` for ``s_i`` in
``cfg.out_strides`` (ImageNet-normalised input expected).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .config import BackboneConfig


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint (never unpickles arbitrary objects)."""
    if not path.is_file():
        raise FileNotFoundError(f"config key 'backbone.weights': file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"config key 'backbone.weights': {path} does not hold a state dict")
    return state


def _feature_key_candidates(key: str) -> list[str]:
    """A FeatureListNet key (``stages_0.blocks.0.w``) -> original timm keys to look for (``stages.0.blocks.0.w``)."""
    head, _, rest = key.partition(".")
    out = [key]
    if "_" in head:
        a, _, b = head.partition("_")
        out.append(f"{a}.{b}.{rest}" if rest else f"{a}.{b}")
    return out


class Backbone(nn.Module):
    """timm ``features_only`` backbone returning the feature maps at ``cfg.out_strides``.

    Args:
        cfg: BackboneConfig (name, local weights, out_strides, frozen_stages, norm_eval, grad_checkpointing).
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = timm.create_model(cfg.name, pretrained=False, features_only=True)
        reductions = list(self.body.feature_info.reduction())
        missing = [s for s in cfg.out_strides if s not in reductions]
        if missing:
            raise ValueError(
                f"config key 'backbone.out_strides': {cfg.name} has no feature map at strides {missing} "
                f"(available: {reductions})"
            )
        self.feature_index = [reductions.index(s) for s in cfg.out_strides]
        channels = list(self.body.feature_info.channels())
        self.out_channels = [channels[i] for i in self.feature_index]
        self.out_strides = list(cfg.out_strides)
        if cfg.weights is not None:
            self.load_weights(Path(cfg.weights))
        if cfg.grad_checkpointing:
            self.body.set_grad_checkpointing(True)  # stage by stage
            for m in self.body.modules():  # and block by block inside stages that support it (ConvNeXt, ...)
                if m is not self.body and hasattr(m, "grad_checkpointing"):
                    m.grad_checkpointing = True
        self._freeze(cfg.frozen_stages)

    def load_weights(self, path: Path) -> None:
        """Load a local checkpoint of the full timm model (classifier keys ignored)."""
        src = _read_state_dict(path)
        own = self.body.state_dict()
        loaded = {}
        for key in own:
            for cand in _feature_key_candidates(key):
                if cand in src and src[cand].shape == own[key].shape:
                    loaded[key] = src[cand]
                    break
        if not loaded:
            raise ValueError(f"config key 'backbone.weights': no tensor of {path} matches {self.cfg.name}")
        missing = sorted(set(own) - set(loaded))
        if missing:
            raise ValueError(
                f"config key 'backbone.weights': {path} lacks {len(missing)} tensors of {self.cfg.name} "
                f"(first: {missing[:3]})"
            )
        self.body.load_state_dict(loaded, strict=True)

    def _freeze(self, frozen_stages: int) -> None:
        """Freeze every module up to and including the ``frozen_stages``-th feature stage (0: stem only)."""
        if frozen_stages < 0:
            return
        # feature stages: taps with stride > 2 (a stem's own tap, e.g. ResNet's act1, is not a stage)
        info = self.body.feature_info
        stages = [n.replace(".", "_") for n, r in zip(info.module_name(), info.reduction()) if r > 2]
        if frozen_stages > len(stages):
            raise ValueError(f"config key 'backbone.frozen_stages' ({frozen_stages}) exceeds the "
                             f"{len(stages)} stages of {self.cfg.name}")
        stop = stages[frozen_stages - 1] if frozen_stages > 0 else None
        for name, module in self.body.named_children():
            if stop is None and name == stages[0]:
                break
            for p in module.parameters():
                p.requires_grad_(False)
            if name == stop:
                break

    def train(self, mode: bool = True) -> Backbone:
        """``norm_eval``: keep every BatchNorm in eval mode (frozen running statistics)."""
        super().train(mode)
        if mode and self.cfg.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images [B, 3, H, W]`` (normalised) -> list of ``[B, C_i, H / s_i, W / s_i]``."""
        feats = self.body(images)
        return [feats[i] for i in self.feature_index]
