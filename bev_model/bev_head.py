"""BEV detection head: a Deformable-DETR decoder over the BEV map with iterative box refinement.

Queries = ``num_queries`` learned queries (content + position embeddings, reference points from a
linear layer) **plus** ``num_hybrid`` hybrid queries from first-stage (perspective) proposals: their
reference points are the proposals' BEV centres, their content an MLP encoding of the proposal
(normalised centre, log size, sin/cos yaw, velocity, class probabilities), their position an MLP of
the reference point. Each layer: self-attention, deformable cross-attention into the BEV (one level),
FFN (post-norm). After each layer a regression branch refines the reference points
(``ref <- sigmoid(delta + logit(ref))``, detached between layers).

With ``HeadConfig.hybrid_box_init`` a hybrid query also takes its proposal's box and class scores as
anchors: every layer outputs the proposal's size/yaw/velocity codes and score logits plus what its branches
learned to change (:meth:`BEVHead.proposal_anchors`), so the decoder starts where the perspective head is,
rather than from a car-sized box at the focal prior.

Group-DETR (``HeadConfig.group_detr = G > 1``, training only): the decoder runs G query groups side by
side, ``[learned_0, hybrid, learned_1, hybrid, ...]``, each ``Q + K`` long; self-attention stays
inside each group, so every group is a complete detector and can be matched one-to-one
with the GT on its own (:class:`bev_model.losses.SetCriterion`). In eval mode only group 0 runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .bev_encoder import FFN
from .box_coder import CODE_SIZE, BoxCoder
from .config import HeadConfig
from .ops import MSDeformAttn

CODE_PRIOR = (1.4, 0.7, 0.5, 0.0, 1.0, 0.0, 0.0)
"""Initial output of every regression branch for codes 3..9 (log size about a car's, sin/cos yaw = 0/1, velocity 0):
the last layer's bias; its weights start at zero."""
CLS_PRIOR = 0.01
"""Initial class probability of every query (focal-loss prior): the class branches' last bias."""
CLS_PRIOR_LOGIT = math.log(CLS_PRIOR / (1 - CLS_PRIOR))


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear-ReLU stack ``dims[0] -> ... -> dims[-1]`` (no activation after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _interleave_groups(learned: torch.Tensor, hybrid: torch.Tensor | None, size: int) -> torch.Tensor:
    """``learned [B, G*size, X]`` + ``hybrid [B, K, X]`` (or None) -> ``[B, G*(size+K), X]``, groups in order."""
    if hybrid is None:
        return learned
    return torch.cat([t for chunk in learned.split(size, 1) for t in (chunk, hybrid)], 1)


class DecoderLayer(nn.Module):
    """Self-attention -> norm -> deformable cross-attention into the BEV -> norm -> FFN -> norm."""

    def __init__(self, dims: int, cfg: HeadConfig, backend: str) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dims, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dims)
        self.cross_attn = MSDeformAttn(dims, cfg.num_heads, 1, cfg.num_points, backend=backend)
        self.norm2 = nn.LayerNorm(dims)
        self.ffn = FFN(dims, cfg.ffn_dims, cfg.dropout)
        self.norm3 = nn.LayerNorm(dims)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, query, pos, ref_xy, value, shapes, starts, groups: int = 1):
        """query, pos ``[B, Q, C]``; ref_xy ``[B, Q, 2]`` in [0, 1]; value ``[B, H*W, C]`` -> ``[B, Q, C]``.

        ``groups``: the Q queries are ``groups`` equal groups; self-attention stays inside each group (the
        groups are folded into the batch for it, G times cheaper than a block-diagonal mask).
        """
        B, Q, C = query.shape
        q = (query + pos).reshape(B * groups, Q // groups, C)
        sa = self.self_attn(q, q, query.reshape(B * groups, Q // groups, C), need_weights=False)[0]
        query = self.norm1(query + self.dropout(sa.reshape(B, Q, C)))
        att = self.cross_attn(query + pos, ref_xy[:, :, None], value, shapes, starts)
        query = self.norm2(query + self.dropout(att))
        return self.norm3(self.ffn(query))


class BEVHead(nn.Module):
    """Decoder + per-layer class/box/attribute branches.

    Args:
        dims: C; cfg: HeadConfig; coder: BoxCoder (pc_range); num_classes; num_attrs; hybrid: build the
        proposal encoders; backend: deformable-attention backend.
    """

    def __init__(self, dims: int, cfg: HeadConfig, coder: BoxCoder, num_classes: int, num_attrs: int,
                 hybrid: bool, backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.coder = coder
        self.num_classes = num_classes
        self.query_embed = nn.Embedding(cfg.num_queries * cfg.group_detr, 2 * dims)  # G groups of Q
        self.ref_points = nn.Linear(dims, 3)
        self.layers = nn.ModuleList(DecoderLayer(dims, cfg, backend) for _ in range(cfg.num_layers))
        self.cls_branches = nn.ModuleList(
            nn.Sequential(nn.Linear(dims, dims), nn.LayerNorm(dims), nn.ReLU(inplace=True), nn.Linear(dims, num_classes))
            for _ in range(cfg.num_layers))
        self.reg_branches = nn.ModuleList(mlp([dims, dims, dims, CODE_SIZE]) for _ in range(cfg.num_layers))
        self.attr_branches = nn.ModuleList(nn.Linear(dims, num_attrs) for _ in range(cfg.num_layers))
        self.hybrid = hybrid
        if hybrid:
            self.proposal_content = mlp([3 + 3 + 2 + 2 + num_classes, dims, dims])
            self.proposal_pos = mlp([3, dims, dims])
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, CLS_PRIOR_LOGIT)
        for branch in self.reg_branches:
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)
            with torch.no_grad():
                branch[-1].bias[3:] = torch.tensor(CODE_PRIOR)
        nn.init.uniform_(self.ref_points.weight, -0.1, 0.1)
        nn.init.zeros_(self.ref_points.bias)

    def encode_proposals(self, proposals: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Proposals (``boxes [B, K, 9]``, ``cls_prob [B, K, C]``, optional ``content [B, K, C]`` added to the encoded
        content: the LiDAR teacher's BEV feature at its heatmap peak) -> (content, pos ``[B, K, C]``, ref ``[B, K, 3]``)."""
        boxes = proposals["boxes"].detach().float()
        ref = self.coder.normalize_xyz(boxes[..., :3]).clamp(1e-3, 1 - 1e-3)
        codes = self.coder.encode(boxes)
        feats = torch.cat([ref, codes[..., 3:8].clamp(-5, 5), torch.nan_to_num(codes[..., 8:10]).clamp(-20, 20) / 10,
                           proposals["cls_prob"].detach().float()], -1)
        dtype = self.proposal_content[0].weight.dtype
        feats = torch.nan_to_num(feats).to(dtype)
        content = self.proposal_content(feats)
        if "content" in proposals:
            content = content + proposals["content"].to(dtype)
        return content, self.proposal_pos(ref.to(dtype)), ref

    def proposal_anchors(self, proposals: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``hybrid_box_init`` anchors of the proposals: ``code [B, K, 7]`` to add to codes 3..9 and ``logit [B, K, C]``
        to add to the class logits, each relative to the branches' initial outputs (so that an untrained layer
        returns the proposal). A proposal's class scores are its class probabilities times its centerness and
        3D confidence (``scores`` / best class probability); fill-ins that NMS had suppressed (``kept`` False) get
        the lowest score."""
        codes = torch.nan_to_num(self.coder.encode(proposals["boxes"].detach().float()))
        rest = torch.cat([codes[..., 3:6].clamp(-5, 5), codes[..., 6:8], codes[..., 8:10].clamp(-20, 20)], -1)
        prob = proposals["cls_prob"].detach().float()
        quality = proposals["scores"].detach().float() / prob.amax(-1).clamp(min=1e-6)
        if "kept" in proposals:
            quality = quality * proposals["kept"].float()
        p = (prob * quality[..., None]).clamp(1e-4, 1 - 1e-4)
        return rest - rest.new_tensor(CODE_PRIOR), torch.logit(p) - CLS_PRIOR_LOGIT

    def num_groups(self) -> int:
        """Query groups that run now: ``group_detr`` in training, 1 in eval mode."""
        return self.cfg.group_detr if self.training else 1

    def forward(self, bev: torch.Tensor, proposals: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            bev: ``[B, C, H, W]`` fused BEV features.
            proposals: optional first-stage proposals (see :meth:`encode_proposals`), ``K`` per sample.
        Returns:
            ``cls [Ly, B, G*Q', num_classes]`` logits, ``codes [Ly, B, G*Q', 10]`` (centre in metres, see
            BoxCoder), ``attr [Ly, B, G*Q', A]`` logits, ``ref [B, G*Q', 3]`` the initial reference points,
            ``groups`` = G (:meth:`num_groups`); ``Q' = num_queries (+ K)``, group g is ``[g*Q', (g+1)*Q')``.
        """
        B, C, H, W = bev.shape
        G, Q = self.num_groups(), self.cfg.num_queries
        value = bev.flatten(2).transpose(1, 2)  # [B, H*W, C]
        shapes = torch.tensor([[H, W]], dtype=torch.long, device=bev.device)
        starts = torch.zeros(1, dtype=torch.long, device=bev.device)
        pos, content = self.query_embed.weight[: G * Q].to(bev.dtype).split(C, -1)  # [G*Q, C] each
        ref = self.ref_points(pos).float().sigmoid()  # [G*Q, 3]; refinement runs in fp32
        learned = [t[None].expand(B, -1, -1) for t in (content, pos, ref)]
        hybrid = [None, None, None]
        anchor_code = anchor_logit = None
        if self.hybrid and proposals is not None:
            h_query, h_pos, h_ref = self.encode_proposals(proposals)
            hybrid = [h_query.to(bev.dtype), h_pos.to(bev.dtype), h_ref]
            if self.cfg.hybrid_box_init:  # learned queries keep the branches' priors (zero anchors)
                a_code, a_logit = self.proposal_anchors(proposals)
                anchor_code = _interleave_groups(a_code.new_zeros(B, G * Q, a_code.shape[-1]), a_code, Q)
                anchor_logit = _interleave_groups(a_logit.new_zeros(B, G * Q, a_logit.shape[-1]), a_logit, Q)
        # [B, G*Q', .]: group g = its Q learned queries, then the K hybrid ones
        query, pos, ref = (_interleave_groups(lt, ht, Q) for lt, ht in zip(learned, hybrid))
        init_ref = ref
        cls_out, code_out, attr_out = [], [], []
        for i, layer in enumerate(self.layers):
            query = layer(query, pos, ref[..., :2], value, shapes, starts, G)
            delta = self.reg_branches[i](query).float()
            new_ref = (delta[..., :3] + inverse_sigmoid(ref)).sigmoid()
            rest, logits = delta[..., 3:], self.cls_branches[i](query).float()
            if anchor_code is not None:
                rest, logits = rest + anchor_code, logits + anchor_logit
            code_out.append(torch.cat([self.coder.denormalize_xyz(new_ref), rest], -1))
            cls_out.append(logits)
            attr_out.append(self.attr_branches[i](query).float())
            ref = new_ref.detach()
        return {"cls": torch.stack(cls_out), "codes": torch.stack(code_out), "attr": torch.stack(attr_out),
                "ref": init_ref, "groups": G}
