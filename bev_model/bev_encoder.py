"""BEV encoder: learned BEV queries on a grid attend to the camera features (spatial cross-attention).

The BEV tensor is ``[B, C, bev_h, bev_w]``; query ``h * bev_w + w`` sits at the cell centre
``x = x_min + (w + 0.5) dx``, ``y = y_min + (h + 0.5) dy`` of ``pc_range``. Each query owns a
pillar of ``num_z_anchors`` points between z_min and z_max; the pillar is projected through every
camera's (augmented) ``ego2img`` into normalised image coordinates. Spatial cross-attention
(``MSDeformAttn``, anchor layout) runs per camera only over the queries whose pillar hits it, and the
per-camera results are averaged over the cameras hit (BEVFormer). Each layer: SCA (+ residual),
norm, FFN (+ residual), norm.
"""

from __future__ import annotations

import torch
from torch import nn

from shards.conventions import CAMERAS

from .config import EncoderConfig
from .ops import MSDeformAttn
from .precision import float32_geometry


def pillar_points(cfg: EncoderConfig) -> torch.Tensor:
    """``[bev_h * bev_w, Z, 3]`` pillar anchor points (metres) of every BEV cell, row-major over (h, w)."""
    x0, y0, z0, x1, y1, z1 = cfg.pc_range
    xs = x0 + (torch.arange(cfg.bev_w, dtype=torch.float32) + 0.5) * (x1 - x0) / cfg.bev_w
    ys = y0 + (torch.arange(cfg.bev_h, dtype=torch.float32) + 0.5) * (y1 - y0) / cfg.bev_h
    zs = z0 + (torch.arange(cfg.num_z_anchors, dtype=torch.float32) + 0.5) * (z1 - z0) / cfg.num_z_anchors
    gy, gx, gz = torch.meshgrid(ys, xs, zs, indexing="ij")
    return torch.stack([gx, gy, gz], -1).reshape(cfg.bev_h * cfg.bev_w, cfg.num_z_anchors, 3)


@float32_geometry
def project_pillars(points: torch.Tensor, ego2img: torch.Tensor, image_hw: tuple[int, int],
                    eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Project pillar points into every camera.

    Args:
        points: ``[Q, Z, 3]`` ego-frame points; ego2img: ``[B, N, 4, 4]``; image_hw: ``(H, W)`` pixels.
    Returns:
        (ref ``[B, N, Q, Z, 2]`` (x, y) normalised to [0, 1] of the image, hit ``[B, N, Q, Z]`` bool:
        in front of the camera and inside the image).
    """
    homo = torch.cat([points, torch.ones_like(points[..., :1])], -1).to(ego2img.dtype)  # [Q, Z, 4]
    cam = torch.einsum("bnij,qzj->bnqzi", ego2img, homo)
    depth = cam[..., 2]
    uv = cam[..., :2] / depth.clamp(min=eps)[..., None]
    ref = uv / torch.tensor([image_hw[1], image_hw[0]], dtype=uv.dtype, device=uv.device)
    hit = (depth > eps) & (ref[..., 0] > 0) & (ref[..., 0] < 1) & (ref[..., 1] > 0) & (ref[..., 1] < 1)
    return ref, hit


class SpatialCrossAttention(nn.Module):
    """SCA: deformable attention from each BEV query to the cameras its pillar hits (residual included).

    Args:
        cfg: EncoderConfig; backend: deformable-attention backend.
    """

    def __init__(self, cfg: EncoderConfig, backend: str) -> None:
        super().__init__()
        self.attn = MSDeformAttn(cfg.embed_dims, cfg.num_heads, cfg.num_levels, cfg.num_points, backend=backend,
                                 reference_layout="anchors", output_proj=False)
        self.output_proj = nn.Linear(cfg.embed_dims, cfg.embed_dims)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, value: torch.Tensor, ref: torch.Tensor,
                hit: torch.Tensor, spatial_shapes: torch.Tensor, level_start: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query, query_pos: ``[B, Q, C]``; value: ``[B * N, S, C]`` camera features (levels flattened);
            ref: ``[B, N, Q, Z, 2]``; hit: ``[B, N, Q, Z]``; spatial_shapes ``[L, 2]``; level_start ``[L]``.
        Returns:
            ``[B, Q, C]`` (query + attention output).
        """
        B, Q, C = query.shape
        N, Z = ref.shape[1], ref.shape[3]
        seen = hit.any(-1)  # [B, N, Q]
        counts = seen.sum(-1)  # [B, N]
        max_len = max(int(counts.max()), 1)
        # indices of the hit queries first (stable), padded with misses: [B, N, max_len]
        idx = torch.argsort((~seen).to(torch.int8), dim=-1, stable=True)[..., :max_len]
        valid = torch.arange(max_len, device=query.device)[None, None] < counts[..., None]  # [B, N, max_len]
        q = (query + query_pos)[:, None].expand(B, N, Q, C)
        q = torch.gather(q, 2, idx[..., None].expand(B, N, max_len, C)).reshape(B * N, max_len, C)
        r = torch.gather(ref, 2, idx[..., None, None].expand(B, N, max_len, Z, 2)).reshape(B * N, max_len, Z, 2)
        out = self.attn(q, r, value, spatial_shapes, level_start)  # [B * N, max_len, C]; fp32 reference points
        out = out.view(B, N, max_len, C) * valid[..., None].to(out.dtype)
        slots = torch.zeros(B, Q, C, dtype=out.dtype, device=out.device)
        slots.scatter_add_(1, idx.reshape(B, N * max_len)[..., None].expand(B, N * max_len, C),
                           out.reshape(B, N * max_len, C))
        slots = slots / seen.sum(1).clamp(min=1)[..., None].to(slots.dtype)
        return query + self.dropout(self.output_proj(slots))


class FFN(nn.Module):
    """``x + Linear(ReLU(Linear(x)))`` with dropout."""

    def __init__(self, dims: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, dims), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class EncoderLayer(nn.Module):
    """SCA -> norm -> FFN -> norm (BEVFormer v2 encoder layer; temporal fusion happens outside)."""

    def __init__(self, cfg: EncoderConfig, backend: str) -> None:
        super().__init__()
        self.sca = SpatialCrossAttention(cfg, backend)
        self.norm1 = nn.LayerNorm(cfg.embed_dims)
        self.ffn = FFN(cfg.embed_dims, cfg.ffn_dims, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.embed_dims)

    def forward(self, query, query_pos, value, ref, hit, spatial_shapes, level_start):
        query = self.norm1(self.sca(query, query_pos, value, ref, hit, spatial_shapes, level_start))
        return self.norm2(self.ffn(query))


class BEVEncoder(nn.Module):
    """Camera features -> BEV features of one frame.

    Args:
        cfg: EncoderConfig; backend: deformable-attention backend.
    """

    def __init__(self, cfg: EncoderConfig, backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dims
        self.bev_embed = nn.Embedding(cfg.bev_h * cfg.bev_w, C)
        self.row_embed = nn.Embedding(cfg.bev_h, C // 2)
        self.col_embed = nn.Embedding(cfg.bev_w, C - C // 2)
        self.level_embed = nn.Parameter(torch.zeros(cfg.num_levels, C))
        self.cams_embed = nn.Parameter(torch.zeros(len(CAMERAS), C))
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.cams_embed)
        self.layers = nn.ModuleList(EncoderLayer(cfg, backend) for _ in range(cfg.num_layers))
        self.register_buffer("pillars", pillar_points(cfg), persistent=False)

    def bev_pos(self) -> torch.Tensor:
        """Learned positional encoding ``[bev_h * bev_w, C]`` (row half + column half)."""
        H, W = self.cfg.bev_h, self.cfg.bev_w
        row = self.row_embed.weight[:, None].expand(H, W, -1)
        col = self.col_embed.weight[None].expand(H, W, -1)
        return torch.cat([row, col], -1).reshape(H * W, -1)

    def flatten_value(self, feats: list[torch.Tensor], num_cams: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``feats``: list of ``[B * N, C, H_l, W_l]`` -> (value ``[B * N, S, C]``, shapes ``[L, 2]``, starts ``[L]``)."""
        if num_cams > self.cams_embed.shape[0]:
            raise ValueError(f"batch has {num_cams} cameras, the encoder knows {self.cams_embed.shape[0]}")
        flat, shapes = [], []
        for lvl, f in enumerate(feats[: self.cfg.num_levels]):
            n_img, C, h, w = f.shape
            v = f.flatten(2).transpose(1, 2) + self.level_embed[lvl].to(f.dtype)
            v = v.view(n_img // num_cams, num_cams, h * w, C) + self.cams_embed[:num_cams, None].to(f.dtype)
            flat.append(v.view(n_img, h * w, C))
            shapes.append((h, w))
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=feats[0].device)
        areas = spatial_shapes.prod(1)
        level_start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
        return torch.cat(flat, 1), spatial_shapes, level_start

    def forward(self, feats: list[torch.Tensor], ego2img: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """
        Args:
            feats: FPN maps, list of ``[B * N, C, H_l, W_l]`` (the first ``num_levels`` are used).
            ego2img: ``[B, N, 4, 4]`` (augmented); image_hw: ``(H, W)`` of the input images.
        Returns:
            ``[B, C, bev_h, bev_w]``.
        """
        B, N = ego2img.shape[:2]
        value, shapes, starts = self.flatten_value(feats, N)
        ref, hit = project_pillars(self.pillars, ego2img.float(), image_hw)
        dtype = value.dtype
        query = self.bev_embed.weight.to(dtype)[None].expand(B, -1, -1)
        pos = self.bev_pos().to(dtype)[None].expand(B, -1, -1)
        for layer in self.layers:
            query = layer(query, pos, value, ref, hit, shapes, starts)
        return query.transpose(1, 2).reshape(B, -1, self.cfg.bev_h, self.cfg.bev_w)
