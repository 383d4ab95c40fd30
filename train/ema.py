"""Exponential moving average of the model weights (an fp32 shadow copy on every rank).

Works with ZeRO stage 0-2, where every rank holds the full (possibly 16-bit) module parameters
after each optimizer step; stage 3 partitions them and is rejected by the config.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` after each update; buffers are copied.

    ``d = min(decay, (1 + n) / (10 + n))`` with ``warmup`` (n = updates so far), else ``decay``.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
            for k, v in module.state_dict().items()
        }

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        params = dict(module.named_parameters())
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if k in params and v.is_floating_point():
                s.mul_(d).add_(v.detach().to(s.dtype), alpha=1.0 - d)
            else:
                s.copy_(v.detach())
        self.num_updates += 1

    def state_dict(self, strip_prefix: str = "") -> dict[str, torch.Tensor]:
        """The shadow weights (CPU), keys without ``strip_prefix``."""
        n = len(strip_prefix)
        return {(k[n:] if strip_prefix and k.startswith(strip_prefix) else k): v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, weights: dict[str, torch.Tensor], num_updates: int, add_prefix: str = "") -> None:
        for k, v in weights.items():
            key = add_prefix + k
            if key not in self.shadow:
                raise KeyError(f"EMA weights: unexpected key {k!r}")
            self.shadow[key].copy_(v)
        self.num_updates = num_updates
