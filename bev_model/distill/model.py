"""BEVDistill: the BEVFormer v2 student plus distillation terms from a frozen LiDAR teacher.

:class:`BEVDistill` *is* the student (a :class:`bev_model.detector.BEVFormerV2` subclass: same parameter names,
same ``predict``) with the student-side distillation modules under ``distill.*`` (the CenterPoint heatmap head
whose shared conv is the student's dense adapter, the two InfoNCE projection heads). The teacher is held in a
plain list, so it is **not** a submodule: it has no entry in ``state_dict()``/``parameters()``, DeepSpeed/ZeRO
never wraps, partitions, offloads or saves it and the optimizer never sees it. It is built and loaded on the
first ``forward_train`` (never for inference), kept in eval mode with ``requires_grad=False``, moved to the
student's device there, and run under ``torch.no_grad()`` in whatever autocast context the student runs in.

Where this follows the official code rather than the paper (zehuichen123/BEVDistill):
* dense: not the paper's ``sum(W ||F3D - F2D||^2) / (H W max W)`` on raw BEV maps, but the code's MSE between the
  CenterPoint heads' shared 3x3 conv-BN-ReLU outputs (student's trainable, teacher's frozen), weighted by the
  max of GT Gaussians (radius ``gaussian_radius(min_overlap=0.1)``, >= 1, not a constant sigma = 2) and
  normalised by the mask's sum;
* instance: no quality score q_i = c^g IoU^(1-g) and no KL on classes; InfoNCE on the *pre-adapter* BEV maps
  sampled at the student's detached centres from every decoder layer, plus L1 box distillation to the teacher's
  top-50 queries weighted by max score squared / sum of scores (class distillation off, weight 0 there too);
* the auxiliary CenterPoint heatmap loss on the student BEV is on.
Differences from the official code: the teacher has no transformer encoder (its FPN output feeds the decoder) and
takes one LiDAR sweep (the shards hold one); the teacher's top-k is by query (max class score), the official
coder's top-k runs over query x class pairs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from shards.contracts.checkpoint import CheckpointError, read_weights

from ..bev_grid import BEVGrid
from ..detector import BEVFormerV2
from ..heatmap import foreground_mask, gaussian_focal_loss, heatmap_targets
from ..lidar.centerpoint import HeatmapHead
from ..lidar.detector import LidarDetector
from .config import DistillConfig
from .losses import InstanceDistill, box_distill_loss, dense_feature_loss, teacher_topk

DISTILL_PREFIX = "distill."
"""Parameter-name prefix of the training-only distillation modules (dropped by :func:`student_state_dict`)."""


def student_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BEVDistill state_dict (e.g. a checkpoint's ``weights_fp32.pt``) -> the plain student's state_dict."""
    return {k: v for k, v in state.items() if not k.startswith(DISTILL_PREFIX)}


class BEVDistill(BEVFormerV2):
    """Build with :func:`bev_model.build_model` from a :class:`DistillConfig`."""

    def __init__(self, cfg: DistillConfig) -> None:
        cfg.validate()
        super().__init__(cfg.student_config())
        self.distill_cfg = cfg
        self.teacher_cfg = cfg.teacher_config()
        d = cfg.distill
        C = self.cfg.encoder.embed_dims
        e = self.cfg.encoder
        self.grid = BEVGrid(tuple(e.pc_range), e.bev_h, e.bev_w)
        self.distill = nn.ModuleDict()
        if d.dense or d.heatmap:
            self.distill["heatmap"] = HeatmapHead(C, self.teacher_cfg.heatmap.shared_channels, self.cfg.num_classes)
        if d.instance:
            self.distill["instance"] = InstanceDistill(C, self.teacher_cfg.embed_dims, d.instance_dims or 2 * C,
                                                       d.instance_temperature)
        self._teacher: list[LidarDetector] = []  # a list: not a registered submodule

    # ------------------------------------------------------------------ teacher

    def load_teacher(self) -> LidarDetector:
        """Build the teacher and load its checkpoint (or seed it: ``teacher.random_init``); frozen, eval mode."""
        t = self.distill_cfg.teacher
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            teacher = LidarDetector(self.teacher_cfg)
        if t.checkpoint is not None:
            path = t.checkpoint / t.weights
            if not path.is_file():
                raise CheckpointError(f"config key 'model.teacher.checkpoint': no teacher weights {path}")
            state = read_weights(path)
            missing, unexpected = teacher.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"teacher checkpoint {path}: {len(missing)} missing (e.g. {missing[:3]}), "
                                      f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}) weights")
        elif not t.random_init:
            raise CheckpointError("config key 'model.teacher.checkpoint' is required to train with distillation "
                                  "(or model.teacher.random_init=true for tests and benchmarks)")
        teacher.requires_grad_(False)
        return teacher.eval()

    def teacher(self, device: torch.device) -> LidarDetector:
        """The frozen teacher on ``device`` (built on first use)."""
        if not self._teacher:
            self._teacher.append(self.load_teacher())
        t = self._teacher[0]
        if next(t.parameters()).device != device:
            t.to(device)
        return t.eval()

    # ------------------------------------------------------------------ training

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        """The student's losses plus ``distill.dense``, ``distill.instance``, ``distill.box``, ``distill.heatmap``."""
        losses, out = self.train_outputs(batch)
        d = self.distill_cfg.distill
        if not (d.dense or d.instance or d.box or d.heatmap):
            return losses  # every term off: the student alone (the ablation's baseline), no teacher run
        bev = out["bev"]
        dev = bev.device
        with torch.no_grad():
            t_out = self.teacher(dev).outputs(batch)
        gt_boxes, gt_labels, _ = batch.detection_targets(dev)
        terms: dict[str, torch.Tensor] = {}
        if "heatmap" in self.distill:
            shared, heat = self.distill["heatmap"](bev)
            if d.heatmap:
                target = heatmap_targets(gt_boxes, gt_labels, self.grid, self.cfg.num_classes, d.heatmap_min_overlap,
                                         d.heatmap_min_radius)
                terms["distill.heatmap"] = d.heatmap_weight * gaussian_focal_loss(heat, target)
            if d.dense:
                mask = foreground_mask(gt_boxes, self.grid, d.dense_min_overlap, d.dense_min_radius)
                terms["distill.dense"] = d.dense_weight * dense_feature_loss(shared, t_out["shared"], mask)
        if d.instance:
            centres = self.coder.normalize_xyz(out["codes"][..., :3].detach().float())[..., :2]  # [Ly, B, Q, 2]
            centres = centres.transpose(0, 1).flatten(1, 2)  # [B, Ly * Q, 2]
            terms["distill.instance"] = d.instance_weight * self.distill["instance"](bev, t_out["bev"], centres)
        if d.box:
            t_prob, t_codes = teacher_topk(t_out["cls"][-1], t_out["codes"][-1], d.box_topk)
            G = int(out.get("groups", 1))
            size = out["cls"].shape[2] // G
            total = bev.new_zeros((), dtype=torch.float32)
            for i in range(out["cls"].shape[0]):
                for g in range(G):
                    sl = slice(g * size, (g + 1) * size)
                    total = total + box_distill_loss(out["cls"][i][:, sl], out["codes"][i][:, sl], t_prob, t_codes,
                                                     self.criterion.code_weights, d.box_cost_cls, d.box_cost_l1) / G
            terms["distill.box"] = d.box_weight * total
        losses.update(terms)
        losses["loss"] = losses["loss"] + sum(terms.values())
        return losses
