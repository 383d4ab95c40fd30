"""Hungarian matching between BEV-head predictions and GT boxes (scipy ``linear_sum_assignment``).

Cost = ``w_cls`` · focal classification cost + ``w_box`` · L1 over the first 8 code numbers
(centre in metres, log size, sin/cos yaw; velocity is not matched), as in BEVFormer.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to GT boxes.

    Args:
        weight_cls, weight_box: cost weights; alpha, gamma: focal cost parameters.
    """

    def __init__(self, weight_cls: float = 2.0, weight_box: float = 0.75, alpha: float = 0.25,
                 gamma: float = 2.0) -> None:
        super().__init__()
        self.weight_cls, self.weight_box, self.alpha, self.gamma = weight_cls, weight_box, alpha, gamma

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, codes: torch.Tensor, gt_labels: list[torch.Tensor],
                gt_codes: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            logits: ``[B, Q, C]`` class logits; codes: ``[B, Q, 10]`` predicted box codes.
            gt_labels: list of ``[G_b]``; gt_codes: list of ``[G_b, 10]``.
        Returns:
            list of B ``(query_index [K_b], gt_index [K_b])`` int64 pairs, ``K_b = min(Q, G_b)``.
        """
        out = []
        for b in range(logits.shape[0]):
            if gt_labels[b].numel() == 0:
                empty = torch.zeros(0, dtype=torch.long)
                out.append((empty, empty))
                continue
            prob = logits[b].float().sigmoid()  # [Q, C]
            neg = (1 - self.alpha) * prob.pow(self.gamma) * -(1 - prob + 1e-8).log()
            pos = self.alpha * (1 - prob).pow(self.gamma) * -(prob + 1e-8).log()
            cost_cls = (pos - neg)[:, gt_labels[b]]  # [Q, G]
            cost_box = torch.cdist(codes[b, :, :8].float(), gt_codes[b][:, :8].float(), p=1)
            cost = self.weight_cls * cost_cls + self.weight_box * cost_box
            cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6).cpu().numpy()
            qi, gi = linear_sum_assignment(cost)
            out.append((torch.as_tensor(qi, dtype=torch.long), torch.as_tensor(gi, dtype=torch.long)))
        return out
