"""Random problems for the deformable-attention op (tests and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Problem:
    """Sizes of one op call: batch B, level shapes [(H, W)], queries Q, heads M, head dim D, points P."""

    batch: int
    shapes: tuple[tuple[int, int], ...]
    queries: int
    heads: int = 8
    head_dim: int = 32
    points: int = 4

    @property
    def num_positions(self) -> int:
        return sum(h * w for h, w in self.shapes)


def level_tensors(shapes: tuple[tuple[int, int], ...], device: str | torch.device = "cpu"):
    """``spatial_shapes [L, 2]`` and ``level_start_index [L]`` (int64) for level ``shapes``."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device).reshape(-1, 2)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


def edge_locations(
    shapes: tuple[tuple[int, int], ...], count: int, generator: torch.Generator
) -> torch.Tensor:
    """``[count, L, 2]`` locations on and around the map borders: 0, 1, pixel centres -1, 0, W-1, W, far outside.

    Values are exact in binary floating point when H and W are powers of two.
    """
    cols = []
    for h, w in shapes:
        picks = []
        for size in (w, h):
            special = torch.tensor(
                [
                    0.0,
                    1.0,
                    -0.5 / size,
                    0.5 / size,
                    (size - 0.5) / size,
                    (size + 0.5) / size,
                    -0.75,
                    1.75,
                    0.5,
                ]
            )
            picks.append(special[torch.randint(len(special), (count,), generator=generator)])
        cols.append(torch.stack(picks, -1))
    return torch.stack(cols, 1)


def random_inputs(
    problem: Problem,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    edge_fraction: float = 0.0,
    spread: float = 1.4,
    requires_grad: bool = False,
) -> dict[str, torch.Tensor]:
    """Inputs of ``multi_scale_deformable_attn`` for ``problem``.

    Locations are uniform in ``[(1 - spread) / 2, (1 + spread) / 2]`` (spread > 1 puts some outside the
    map); ``edge_fraction`` of them are replaced by exact border values (``edge_locations``).
    Attention weights are a softmax over L*P. Returns a dict with keys value, spatial_shapes,
    level_start_index, sampling_locations, attention_weights.
    """
    g = torch.Generator().manual_seed(seed)
    B, Q, M, D, P = problem.batch, problem.queries, problem.heads, problem.head_dim, problem.points
    L = len(problem.shapes)
    spatial_shapes, level_start_index = level_tensors(problem.shapes)
    value = torch.randn(B, problem.num_positions, M, D, generator=g)
    loc = (torch.rand(B, Q, M, L, P, 2, generator=g) - 0.5) * spread + 0.5
    if edge_fraction > 0:
        n = B * Q * M * P
        edges = edge_locations(problem.shapes, n, g).view(B, Q, M, P, L, 2).transpose(3, 4)
        pick = torch.rand(B, Q, M, L, P, 1, generator=g) < edge_fraction
        loc = torch.where(pick, edges, loc)
    weights = torch.randn(B, Q, M, L * P, generator=g).softmax(-1).view(B, Q, M, L, P)
    out = {
        "value": value.to(device=device, dtype=dtype),
        "spatial_shapes": spatial_shapes.to(device),
        "level_start_index": level_start_index.to(device),
        "sampling_locations": loc.to(device=device, dtype=dtype),
        "attention_weights": weights.to(device=device, dtype=dtype),
    }
    if requires_grad:
        for key in ("value", "sampling_locations", "attention_weights"):
            out[key].requires_grad_(True)
    return out


def forward_and_grads(
    inputs: dict[str, torch.Tensor], backend: str, dtype: torch.dtype | None = None, seed: int = 1
):
    """Run the op with ``backend`` on (a fresh copy of) ``inputs`` cast to ``dtype`` and backprop a fixed random
    upstream gradient. Returns float64 ``(out, grad_value, grad_sampling_locations, grad_attention_weights)``."""
    from .functional import multi_scale_deformable_attn

    value, loc, attn = (
        inputs[k].detach().to(dtype or inputs[k].dtype).requires_grad_(True)
        for k in ("value", "sampling_locations", "attention_weights")
    )
    out = multi_scale_deformable_attn(
        value, inputs["spatial_shapes"], inputs["level_start_index"], loc, attn, backend=backend
    )
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g).to(out.device)
    grads = torch.autograd.grad((out.float() * upstream).sum(), (value, loc, attn))
    return tuple(t.detach().double().cpu() for t in (out, *grads))


def fit_toy_target(attn, query, ref, value, spatial_shapes, level_start_index, target, steps: int,
                   lr: float) -> list[float]:
    """Adam steps of ``attn(query, ref, value, ...)`` toward ``target`` (MSE); checks after every backward
    that gradients reach the sampling offsets and attention weights. Returns the loss of every step."""
    opt = torch.optim.Adam(attn.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(attn(query, ref, value, spatial_shapes, level_start_index), target)
        opt.zero_grad()
        loss.backward()
        assert attn.sampling_offsets.weight.grad.abs().sum() > 0
        assert attn.attention_weights.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    return losses
