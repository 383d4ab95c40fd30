"""BEVDistill's distillation terms (what the official code computes; see docs in :mod:`bev_model.distill.model`).

* :func:`dense_feature_loss`: ``sum(mask * sum_c (Fs - Ft)^2) / sum(mask)``.
* :class:`InstanceDistill`: both BEV maps ``grid_sample``d at the student's detached predicted centres,
  per-modality projection (Linear C -> D, Linear-BN-ReLU-Linear, L2 norm), InfoNCE with temperature T.
* :func:`teacher_topk` + :func:`box_distill_loss`: the teacher's top-k boxes (no NMS, soft class scores),
  Hungarian-matched to the student's queries, L1 weighted by the teacher's max score squared / sum of scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def dense_feature_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``student, teacher [B, C, H, W]``, ``mask [B, H, W]`` -> scalar; 0 where the mask is empty."""
    sq = (student.float() - teacher.float()).pow(2).sum(1)  # [B, H, W]
    m = mask.float()
    return (sq * m).sum() / m.sum().clamp(min=1e-6)


def sample_bev(bev: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``bev [B, C, H, W]`` at ``centres [B, M, 2]`` (x, y in [0, 1] over pc_range) -> ``[B, M, C]``.

    x runs along the columns and y along the rows (``bev_model.bev_grid``): ``grid_sample``'s (x, y) order,
    with ``align_corners=False`` so 0 and 1 are the grid's outer edges, like the metric range.
    """
    grid = (centres.float() * 2 - 1)[:, :, None, :].to(bev.dtype)  # [B, M, 1, 2]
    return F.grid_sample(bev, grid, align_corners=False)[..., 0].transpose(1, 2)


class ProjectionHead(nn.Module):
    """Linear C -> D, then Linear-BN-ReLU-Linear (D -> D), L2-normalised: ``[N, C] -> [N, D]``."""

    def __init__(self, in_dims: int, dims: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dims, dims)
        self.encoder = nn.Sequential(nn.Linear(dims, dims), nn.BatchNorm1d(dims), nn.ReLU(inplace=True),
                                     nn.Linear(dims, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.proj.weight.dtype
        return F.normalize(self.encoder(self.proj(x.to(dtype))).float(), dim=1)


def info_nce(z_student: torch.Tensor, z_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[N, D]`` each (L2-normalised) -> cross-entropy of ``teacher . student^T / T`` on the diagonal."""
    logits = z_teacher @ z_student.t() / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


class InstanceDistill(nn.Module):
    """Sparse instance distillation (InfoNCE). Args: student channels, teacher channels, projection width D."""

    def __init__(self, student_dims: int, teacher_dims: int, dims: int, temperature: float) -> None:
        super().__init__()
        self.student_proj = ProjectionHead(student_dims, dims)
        self.teacher_proj = ProjectionHead(teacher_dims, dims)
        self.temperature = temperature

    def forward(self, bev_student: torch.Tensor, bev_teacher: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """``bev_* [B, C_*, H, W]``, ``centres [B, M, 2]`` in [0, 1] (detached here) -> scalar InfoNCE over B * M."""
        c = centres.detach()
        fs = sample_bev(bev_student, c).flatten(0, 1)
        ft = sample_bev(bev_teacher.detach(), c).flatten(0, 1)
        return info_nce(self.student_proj(fs), self.teacher_proj(ft), self.temperature)


@torch.no_grad()
def teacher_topk(logits: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``k`` most confident queries (no NMS): ``logits [B, Q, C]``, ``codes [B, Q, 10]`` ->
    (class probabilities ``[B, k, C]``, codes ``[B, k, 10]``)."""
    prob = logits.float().sigmoid()
    k = min(k, prob.shape[1])
    idx = prob.amax(-1).topk(k, dim=1).indices  # [B, k]
    return prob.gather(1, idx[..., None].expand(-1, -1, prob.shape[-1])), codes.float().gather(
        1, idx[..., None].expand(-1, -1, codes.shape[-1]))


@torch.no_grad()
def match_to_teacher(logits: torch.Tensor, codes: torch.Tensor, t_prob: torch.Tensor, t_codes: torch.Tensor,
                     w_cls: float, w_l1: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Hungarian matching of student queries to teacher boxes, per sample.

    Cost = ``w_cls`` x soft BCE (student sigmoid vs teacher probabilities, mean over classes) + ``w_l1`` x L1
    over the first 8 code numbers. ``logits [B, Q, C]``, ``codes [B, Q, 10]``, ``t_prob [B, k, C]``,
    ``t_codes [B, k, 10]`` -> B ``(query index, teacher index)`` pairs.
    """
    out = []
    for b in range(logits.shape[0]):
        p = logits[b].float().sigmoid().clamp(1e-6, 1 - 1e-6)
        t = t_prob[b]
        bce = -(p.log() @ t.t() + (1 - p).log() @ (1 - t).t()) / p.shape[-1]
        l1 = torch.cdist(codes[b, :, :8].float(), t_codes[b, :, :8], p=1)
        cost = torch.nan_to_num(w_cls * bce + w_l1 * l1, nan=1e6, posinf=1e6).cpu().numpy()
        qi, ti = linear_sum_assignment(cost)
        out.append((torch.as_tensor(qi, dtype=torch.long), torch.as_tensor(ti, dtype=torch.long)))
    return out


def box_distill_loss(logits: torch.Tensor, codes: torch.Tensor, t_prob: torch.Tensor, t_codes: torch.Tensor,
                     code_weights: torch.Tensor, w_cls: float = 1.0, w_l1: float = 0.25) -> torch.Tensor:
    """One decoder layer: ``sum_t s_t^2 * sum_j w_j |code_s - code_t| / sum_t s_t`` over matched pairs, with
    ``s_t`` the teacher box's max class probability (teacher velocities NaN-masked)."""
    matches = match_to_teacher(logits, codes, t_prob, t_codes, w_cls, w_l1)
    score = t_prob.amax(-1)  # [B, k]
    num, den = codes.new_zeros((), dtype=torch.float32), score.sum().clamp(min=1e-6)
    for b, (qi, ti) in enumerate(matches):
        qi, ti = qi.to(codes.device), ti.to(codes.device)
        tgt = t_codes[b, ti]
        w = code_weights.to(codes.device)[None] * torch.isfinite(tgt)
        l1 = ((codes[b, qi].float() - torch.nan_to_num(tgt)).abs() * w).sum(-1)
        num = num + (score[b, ti].pow(2) * l1).sum()
    return num / den
