"""``init.from_checkpoint``: start a new run from another run's weights (weights only).

Distinct from ``--resume``: the optimizer, LR schedule, step counter and data position start fresh;
only tensors of the model are copied. Typical uses: fine-tune a detector on another split, the second
stage of a two-stage training (drop what the second stage re-initialises), or start from the official
BEVFormer v2 / FCOS3D release converted by :func:`convert_mmdet3d`.

    init:
      from_checkpoint: runs/stage1/checkpoints/step_00024000   # a checkpoint dir or a weights file
      weights: weights_ema_fp32.pt                              # which file of a checkpoint dir
      drop: [head.]                                             # key prefixes left at their fresh init

Rules: the source file is read with ``weights_only=True`` (``shards.contracts.checkpoint.read_weights``);
every prefix in ``drop`` must match at least one source key (a typo is an error, not a silent no-op);
after dropping, a source key the model does not have, or a tensor of another shape, is an error naming
it; model keys the source lacks keep their fresh initialisation and are counted in the log. When the
source fills the backbone, ``Backbone.mark_pretrained`` applies ``frozen_stages``/``norm_eval``.

mmdet3d naming (:func:`convert_mmdet3d`, applied when the source has ``img_backbone.*`` keys, as the
BEVFormer v2 release does): ``img_backbone.X`` -> ``backbone.body.X`` (mmdet's ResNet names tensors like
timm's); ``img_neck.lateral_convs.i.conv.P`` -> ``neck.fpn.inner_blocks.i.0.P``;
``img_neck.fpn_convs.i.conv.P`` -> ``neck.fpn.layer_blocks.i.0.P`` for the FPN's own levels, and the
extra levels (mmdet ``add_extra_convs='on_output'``, ReLU before the second) -> ``neck.fpn.extra_blocks.p6/p7``
(or ``.convs.j``). Nothing else is mapped: ``pts_bbox_head.*`` (and any other key) is reported as
unmapped and left out, i.e. heads, encoder and temporal fusion start fresh.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bev_model.backbone import unwrap_state_dict
from shards.contracts.checkpoint import CheckpointError, checkpoint_files, read_weights


def convert_mmdet3d(state: dict[str, Any], num_in_levels: int, extra_names: list[str]) -> tuple[dict[str, Any], list[str]]:
    """mmdet3d detector keys -> ours (backbone + FPN neck); returns ``(converted, unmapped source keys)``.

    ``num_in_levels``: backbone maps the FPN takes (lateral convs); ``extra_names``: our extra-level
    module names in order (``["p6", "p7"]`` or ``["convs.0", ...]``).
    """
    out: dict[str, Any] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith("img_backbone."):
            out["backbone.body." + k[len("img_backbone."):]] = value
            continue
        m = re.fullmatch(r"img_neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", k)
        if m:
            out[f"neck.fpn.inner_blocks.{m[1]}.0.{m[2]}"] = value
            continue
        m = re.fullmatch(r"img_neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", k)
        if m:
            i = int(m[1])
            if i < num_in_levels:
                out[f"neck.fpn.layer_blocks.{i}.0.{m[2]}"] = value
                continue
            if i - num_in_levels < len(extra_names):
                out[f"neck.fpn.extra_blocks.{extra_names[i - num_in_levels]}.{m[2]}"] = value
                continue
        unmapped.append(key)
    return out, unmapped


def _neck_layout(model: nn.Module) -> tuple[int, list[str]]:
    """(number of FPN input levels, names of the extra-level convs) of ``model.neck`` (torchvision FPN)."""
    keys = [k for k in model.state_dict() if k.startswith("neck.fpn.")]
    n_in = len({k.split(".")[3] for k in keys if k.startswith("neck.fpn.inner_blocks.")})
    extra = sorted({k[len("neck.fpn.extra_blocks."):].rsplit(".", 1)[0] for k in keys
                    if k.startswith("neck.fpn.extra_blocks.")})
    return n_in, extra


def init_from_checkpoint(model: nn.Module, source: str | Path, *, weights: str = "weights_fp32.pt",
                         drop: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy the tensors of ``source`` into ``model`` (see the module docstring); returns a report
    ``{"file", "loaded", "dropped": {prefix: n}, "fresh": n, "unmapped": n}``."""
    source = Path(source)
    if source.is_dir():
        wfile = source / weights
        if not wfile.is_file():
            wfile, _ = checkpoint_files(source, weights_name=weights)  # raises CheckpointError naming the file
    else:
        wfile = source
    state = unwrap_state_dict(read_weights(wfile))  # mmcv checkpoints: {"meta", "state_dict"}
    if not isinstance(state, dict):
        raise CheckpointError(f"init.from_checkpoint {wfile}: expected a state_dict mapping")
    unmapped: list[str] = []
    if any(k.startswith(("img_backbone.", "module.img_backbone.")) for k in state):
        n_in, extra = _neck_layout(model)
        state, unmapped = convert_mmdet3d(state, n_in, extra)
        log(f"init: {wfile} is in mmdet3d naming: mapped {len(state)} backbone/neck tensors, left out "
            f"{len(unmapped)} others (first: {unmapped[:3]})")
    drop = list(drop or [])
    dropped: dict[str, int] = {}
    for prefix in drop:
        hit = [k for k in state if k.startswith(prefix)]
        if not hit:
            raise CheckpointError(f"config key 'init.drop': prefix {prefix!r} matches no key of {wfile}")
        dropped[prefix] = len(hit)
        for k in hit:
            del state[k]
    own = model.state_dict()
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"init.from_checkpoint {wfile}: {len(extra)} key(s) the model does not have "
                              f"(first: {extra[:5]}); add their prefixes to init.drop if intended")
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(state)
           if torch.is_tensor(state[k]) and state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"init.from_checkpoint {wfile}: tensors of another shape: {bad[:5]}")
    fresh = sorted(set(own) - set(state))
    model.load_state_dict(state, strict=False)
    for prefix, n in dropped.items():
        log(f"init: dropped {n} tensor(s) under {prefix!r}")
    log(f"init: loaded {len(state)} tensor(s) from {wfile}; {len(fresh)} model tensor(s) keep their fresh init"
        + (f" (first: {fresh[:3]})" if fresh else ""))
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "mark_pretrained"):
        bkeys = [k for k in own if k.startswith("backbone.")]
        if bkeys and all(k in state for k in bkeys):
            backbone.mark_pretrained()
    return {"file": str(wfile), "loaded": len(state), "dropped": dropped, "fresh": len(fresh),
            "unmapped": len(unmapped)}
