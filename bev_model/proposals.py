"""First-stage proposals for the hybrid queries: perspective boxes of all cameras -> BEV NMS -> top-K.

Per sample: the decoded boxes of its N cameras (all locations) are pooled, the ``pre_nms`` best by
score kept, then class-aware BEV NMS with ``torchvision.ops.batched_nms`` on axis-aligned squares of
side ``1.5 * radius`` around each centre (two same-class proposals whose centres lie closer than about
``radius`` along x and y are duplicates; IoU threshold 0.2), then the top ``k``. If fewer than ``k``
survive, the best suppressed candidates fill the remaining slots so the query count stays fixed.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms


def select_proposals(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, cls_prob: torch.Tensor,
                     k: int, radius: float, pre_nms: int) -> dict[str, torch.Tensor]:
    """Pick ``k`` proposals for each of ``B`` samples.

    Args:
        boxes: ``[B, P, 9]`` decoded boxes (ego frame); scores ``[B, P]``; labels ``[B, P]``;
            cls_prob ``[B, P, C]``; k; radius (metres); pre_nms (candidates kept before NMS).
    Returns:
        dict: ``boxes [B, k, 9]``, ``scores [B, k]``, ``labels [B, k]``, ``cls_prob [B, k, C]``,
        ``kept [B, k]`` bool (False for fill-ins that NMS had suppressed).
    """
    out: dict[str, list[torch.Tensor]] = {"boxes": [], "scores": [], "labels": [], "cls_prob": [], "kept": []}
    side = 0.75 * radius
    for b in range(boxes.shape[0]):
        s = torch.nan_to_num(scores[b].float(), nan=0.0)
        top = s.topk(min(pre_nms, s.numel())).indices
        bx = boxes[b, top]
        xy = torch.nan_to_num(bx[:, :2].float(), nan=0.0, posinf=1e4, neginf=-1e4)
        squares = torch.cat([xy - side, xy + side], -1)
        keep = batched_nms(squares, s[top], labels[b, top], iou_threshold=0.2)
        rest = torch.ones(top.numel(), dtype=torch.bool, device=s.device)
        rest[keep] = False
        order = torch.cat([keep, rest.nonzero(as_tuple=True)[0]])  # both already in score order
        if order.numel() < k:
            order = order.repeat((k + order.numel() - 1) // order.numel())
        order = order[:k]
        kept = torch.zeros(k, dtype=torch.bool, device=s.device)
        kept[: min(k, keep.numel())] = True
        idx = top[order]
        out["boxes"].append(boxes[b, idx])
        out["scores"].append(scores[b, idx])
        out["labels"].append(labels[b, idx])
        out["cls_prob"].append(cls_prob[b, idx])
        out["kept"].append(kept)
    return {key: torch.stack(v) for key, v in out.items()}
