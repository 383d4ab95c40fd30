"""Set-prediction loss of the BEV head (DETR's ``SetCriterion`` idea): match, then focal + L1 (+ attribute CE).

Per decoder layer: sigmoid focal loss over all queries (``weight_cls`` 2.0), code-weighted L1 on the
matched boxes (``weight_box`` 0.75; NaN velocities masked), attribute cross-entropy on matched boxes
that have one (``weight_attr``). Each normalised by the number of GT boxes. With Group-DETR
(``outputs["groups"] = G > 1``) each group of queries is matched and scored on its own and the terms
are averaged over the G groups, so their scale does not depend on G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .box_coder import BoxCoder
from .config import HeadConfig
from .matcher import HungarianMatcher


class SetCriterion(nn.Module):
    """Losses of the BEV head for every decoder layer.

    Args:
        cfg: HeadConfig; coder: BoxCoder; num_classes.
    """

    def __init__(self, cfg: HeadConfig, coder: BoxCoder, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.coder = coder
        self.num_classes = num_classes
        self.matcher = HungarianMatcher(cfg.weight_cls, cfg.weight_box, cfg.focal_alpha, cfg.focal_gamma)
        self.register_buffer("code_weights", torch.tensor(cfg.code_weights), persistent=False)

    def layer_loss(self, logits, codes, attr_logits, gt_labels, gt_codes, gt_attrs, num_gt: float) -> dict[str, torch.Tensor]:
        """One layer: logits ``[B, Q, C]``, codes ``[B, Q, 10]``, attr_logits ``[B, Q, A]`` -> {cls, box, attr}."""
        cfg = self.cfg
        matches = self.matcher(logits, codes, gt_labels, gt_codes)
        target = torch.zeros_like(logits)
        q_idx, m_codes, m_gt_codes, m_attr_logits, m_attrs = [], [], [], [], []
        for b, (qi, gi) in enumerate(matches):
            qi, gi = qi.to(logits.device), gi.to(logits.device)
            target[b, qi, gt_labels[b][gi]] = 1.0
            q_idx.append(qi)
            m_codes.append(codes[b, qi])
            m_gt_codes.append(gt_codes[b][gi])
            m_attr_logits.append(attr_logits[b, qi])
            m_attrs.append(gt_attrs[b][gi])
        loss_cls = sigmoid_focal_loss(logits.float(), target.float(), alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                                      reduction="sum") / num_gt
        pred = torch.cat(m_codes).float()
        tgt = torch.cat(m_gt_codes).float()
        weight = self.code_weights[None].expand_as(tgt) * torch.isfinite(tgt)
        l1 = (pred - torch.nan_to_num(tgt, nan=0.0)).abs() * weight
        loss_box = l1.sum() / num_gt
        a_logits, a_tgt = torch.cat(m_attr_logits).float(), torch.cat(m_attrs)
        has = a_tgt >= 0
        loss_attr = (F.cross_entropy(a_logits[has], a_tgt[has], reduction="sum") / num_gt if bool(has.any())
                     else a_logits.sum() * 0.0)
        return {"cls": cfg.weight_cls * loss_cls, "box": cfg.weight_box * loss_box, "attr": cfg.weight_attr * loss_attr}

    def forward(self, outputs: dict[str, torch.Tensor], gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                gt_attrs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``cls [Ly, B, G*Q, C]``, ``codes [Ly, B, G*Q, 10]``, ``attr [Ly, B, G*Q, A]``,
                optional ``groups`` = G (query groups of equal size, default 1).
            gt_boxes: list of ``[G_b, 9]``; gt_labels: list of ``[G_b]``; gt_attrs: list of ``[G_b]``.
        Returns:
            ``{"cls", "box", "attr"}`` for the last layer and ``{"d{i}.cls", ...}`` for the earlier ones.
        """
        gt_codes = [self.coder.encode(b.float()) for b in gt_boxes]
        num_gt = max(float(sum(int(lab.numel()) for lab in gt_labels)), 1.0)
        n_layers, _, n_queries = outputs["cls"].shape[:3]
        groups = int(outputs.get("groups", 1))
        size = n_queries // groups
        losses: dict[str, torch.Tensor] = {}
        for i in range(n_layers):
            prefix = "" if i == n_layers - 1 else f"d{i}."
            for g in range(groups):
                sl = slice(g * size, (g + 1) * size)
                terms = self.layer_loss(outputs["cls"][i][:, sl], outputs["codes"][i][:, sl], outputs["attr"][i][:, sl],
                                        gt_labels, gt_codes, gt_attrs, num_gt)
                for k, v in terms.items():
                    losses[prefix + k] = losses.get(prefix + k, 0.0) + v / groups
        return losses
