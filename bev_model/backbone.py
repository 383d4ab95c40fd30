"""Image backbone: any timm model through ``features_only``; local weights only, optional frozen stages.

``Backbone(cfg)(images [B, 3, H, W]) -> list of [B, C_i, H / s_i, W / s_i]`` for ``s_i`` in
``cfg.out_strides`` (ImageNet-normalised input expected).

Pretrained weights. Nothing is downloaded (``pretrained=False``). ``backbone.weights=PATH`` loads a
local file (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True``) holding either a timm
model's state dict (e.g. ``timm.create_model("resnet50", pretrained=True).state_dict()`` saved with
``torch.save`` on a machine with internet, or the ``model.safetensors`` of a timm Hugging Face repo:
copy that file to the offline machine and set ``model.backbone.weights=/path/to/file``), or an
mmdet/mmdet3d checkpoint: its ``backbone.*`` (FCOS, FCOS3D) or ``img_backbone.*`` (BEVFormer v2 release)
keys are taken, prefix stripped, or a bevstream weights file of any detector family (``backbone.body.*``:
e.g. a BEVNeXt started from the image backbone of a BEVFormer v2 run). mmdet's ResNet names its tensors
like torchvision/timm (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``), so they map one
to one. Other keys of such a file (neck, heads) are ignored here; ``train.init_from`` maps ``img_neck.*``
for a whole detector.
Caveat: mmdet "caffe"-style ResNets put the stride in the 1x1 conv and expect BGR 0-255 mean-only
inputs; the names and shapes match timm's ResNet but the network differs slightly (fine-tuning adapts).

Freezing. ``frozen_stages`` and ``norm_eval`` describe how to fine-tune *pretrained* weights: they
apply only once weights are loaded (``backbone.weights``, or :meth:`Backbone.mark_pretrained` after
``init.from_checkpoint`` filled the backbone). A randomly initialised backbone trains every stage with
batch statistics (freezing random weights and never updating BN statistics only hurts), and a
warning says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from .config import BackboneConfig

log = logging.getLogger("bev_model")

BACKBONE_PREFIXES = ("backbone.body.", "img_backbone.", "backbone.")
"""Prefixes of the backbone's keys in bevstream's own detectors (``backbone.body.``: any family's weights file,
e.g. ``RUN/checkpoints/step_X/weights_fp32.pt``), mmdet3d (BEVFormer v2: ``img_backbone.``) and mmdet (FCOS:
``backbone.``)."""


def unwrap_state_dict(state: object) -> object:
    """Strip the usual wrappers: ``{"state_dict": ...}`` (mmcv), ``{"model": ...}``, ``{"module": ...}`` (DeepSpeed)."""
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in timm, bevstream or mmdet naming -> the backbone's tensors in timm naming.

    ``backbone.body.layer1.0.conv1.weight`` / ``img_backbone.layer1.0.conv1.weight`` /
    ``backbone.layer1.0.conv1.weight`` -> ``layer1.0.conv1.weight``
    (the first prefix present wins; a leading ``module.`` is dropped). A plain timm state dict is returned
    as it is.
    """
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    for prefix in BACKBONE_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return state


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint (never unpickles arbitrary objects); backbone keys in timm naming."""
    if not path.is_file():
        raise FileNotFoundError(f"config key 'backbone.weights': file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return backbone_keys(load_file(str(path)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"config key 'backbone.weights': {path} is not a weights file that loads with "
                         f"weights_only=True ({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None
    state = unwrap_state_dict(state)
    if not isinstance(state, dict):
        raise ValueError(f"config key 'backbone.weights': {path} does not hold a state dict")
    return backbone_keys(state)


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
        self.pretrained = False
        if cfg.grad_checkpointing:
            self.body.set_grad_checkpointing(True)  # stage by stage
            for m in self.body.modules():  # and block by block inside stages that support it (ConvNeXt, ...)
                if m is not self.body and hasattr(m, "grad_checkpointing"):
                    m.grad_checkpointing = True
        if cfg.weights is not None:
            self.load_weights(Path(cfg.weights))
            self.mark_pretrained()
        elif cfg.frozen_stages >= 0 or cfg.norm_eval:
            log.warning("backbone %s starts from random weights (no backbone.weights): frozen_stages=%d and "
                        "norm_eval=%s are not applied (they apply to loaded weights)", cfg.name, cfg.frozen_stages,
                        cfg.norm_eval)

    def mark_pretrained(self) -> None:
        """The weights are pretrained: apply ``frozen_stages`` now and ``norm_eval`` from the next ``train()``."""
        self.pretrained = True
        self._freeze(self.cfg.frozen_stages)
        if self.training:
            self.train(True)

    def load_weights(self, path: Path) -> None:
        """Load a local checkpoint of the full timm model or an mmdet/mmdet3d detector (classifier, neck and
        head keys ignored); see the module docstring."""
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
        """``norm_eval`` (pretrained weights only): keep every BatchNorm in eval mode (frozen running statistics)."""
        super().train(mode)
        if mode and self.cfg.norm_eval and self.pretrained:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images [B, 3, H, W]`` (normalised) -> list of ``[B, C_i, H / s_i, W / s_i]``."""
        feats = self.body(images)
        return [feats[i] for i in self.feature_index]
