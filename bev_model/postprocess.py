"""NMS-free decoding of the BEV head: top-k (<= 300) over queries x classes, with velocity and attribute."""

from __future__ import annotations

import torch

from shards.conventions import ATTRIBUTES, CLASS_ATTRIBUTES, CLASSES, transform_boxes

from .box_coder import BoxCoder
from .precision import float32_geometry


def class_attribute_mask(device=None) -> torch.Tensor:
    """``[num_classes, num_attrs]`` bool: attributes the devkit accepts for each class."""
    mask = torch.zeros(len(CLASSES), len(ATTRIBUTES), dtype=torch.bool, device=device)
    for c, name in enumerate(CLASSES):
        for a in CLASS_ATTRIBUTES[name]:
            mask[c, ATTRIBUTES.index(a)] = True
    return mask


@float32_geometry
def postprocess(logits: torch.Tensor, codes: torch.Tensor, attr_logits: torch.Tensor, coder: BoxCoder,
                bev_aug: torch.Tensor | None, max_detections: int = 300) -> list[dict[str, torch.Tensor]]:
    """Last-layer outputs -> per-sample detections in the un-augmented ego frame.

    Args:
        logits: ``[B, Q, C]``; codes: ``[B, Q, 10]``; attr_logits: ``[B, Q, A]``;
        bev_aug: ``[B, 4, 4]`` BEV augmentation of the batch (undone here) or None.
    Returns:
        list of B dicts: ``boxes [K, 9]``, ``scores [K]``, ``labels [K]`` int64, ``attrs [K]`` int64 (-1 none),
        ``K = min(max_detections, Q * C)``.
    """
    B, Q, C = logits.shape
    k = min(max_detections, Q * C)
    scores_all = logits.float().sigmoid().reshape(B, Q * C)
    attr_ok = class_attribute_mask(logits.device)
    out = []
    for b in range(B):
        scores, idx = scores_all[b].topk(k)
        labels = idx % C
        query = idx // C
        boxes = coder.decode(codes[b, query].float())
        if bev_aug is not None:
            boxes = transform_boxes(boxes, torch.linalg.inv(bev_aug[b].float()))
        a = attr_logits[b, query].float().masked_fill(~attr_ok[labels], float("-inf"))
        attrs = torch.where(attr_ok[labels].any(-1), a.argmax(-1), torch.full_like(labels, -1))
        out.append({"boxes": boxes, "scores": scores, "labels": labels.long(), "attrs": attrs.long()})
    return out
