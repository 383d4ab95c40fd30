"""BEVFormer v2: backbone -> FPN -> (perspective head) + BEV encoder -> temporal fusion -> BEV head.

``forward_train(batch)`` returns ``{"loss": total, "bev.cls": ..., "pers.depth": ..., ...}`` with
``total = lambda_bev * sum(bev.*) + lambda_pers * sum(pers.*)``. ``predict(batch, history=None)``
returns per-sample detections in the un-augmented ego frame of the current frame.

The input is a :class:`shards.contracts.batch.Batch` (docs/CONTRACTS.md): ``imgs [B, T, N, 3, H, W]`` RGB in
[0, 1], ``ego2img [B, T, N, 4, 4]``, ``intrinsics [B, T, N, 3, 3]``, ``bev_aug [B, 4, 4]``,
``cur_from_prev [B, T, 4, 4]``, ``valid_prev [B, T]``, ``ego2global [B, T, 4, 4]`` (for history),
``gt_boxes/gt_labels/gt_attrs/gt_num_pts/gt_visibility`` lists, ``scene_token``.
``cur_from_prev[:, t]`` maps the BEV-augmented ego frame of frame t into the augmented current frame
(``bev_aug · inv(e2g_cur) · e2g_t · inv(bev_aug)``, as ``shards.contracts.batch.Batch`` documents); every frame's
``ego2img`` carries the same ``bev_aug``. Frame/offset mapping: :meth:`BEVFormerV2.frame_indices`.
"""

from __future__ import annotations

import torch
from torch import nn

from shards.conventions import transform_boxes

from .backbone import Backbone
from .bev_encoder import BEVEncoder
from .bev_head import BEVHead
from .box_coder import BoxCoder
from .config import ModelConfig
from .losses import SetCriterion
from .neck import FPNNeck
from .perspective_head import PerspectiveHead, PerspectiveLoss, decode_perspective
from .perspective_targets import Locations, build_perspective_targets, make_locations
from .postprocess import postprocess
from .proposals import select_proposals
from .temporal import BEVHistory, ResNetFusion, align_bev, eval_mode, fill_invalid


class BEVFormerV2(nn.Module):
    """The detector. Build with :func:`bev_model.build_model`.

    Args:
        cfg: ModelConfig.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        C = cfg.encoder.embed_dims
        self.backbone = Backbone(cfg.backbone)
        self.neck = FPNNeck(self.backbone.out_channels, cfg.neck)
        s0 = self.backbone.out_strides[0]
        self.strides = [s0 * 2**i for i in range(cfg.neck.num_levels)]
        self.encoder = BEVEncoder(cfg.encoder, cfg.attn_backend)
        offsets = cfg.temporal.offsets
        self.fusion = ResNetFusion(C, len(offsets), cfg.temporal.num_blocks) if len(offsets) > 1 else None
        self.coder = BoxCoder(cfg.encoder.pc_range)
        self.pers_head = (PerspectiveHead(C, cfg.num_classes, cfg.num_attrs, cfg.neck.num_levels, cfg.perspective)
                          if cfg.use_perspective else None)
        self.pers_loss = PerspectiveLoss(cfg.perspective)
        self.head = BEVHead(C, cfg.head, self.coder, cfg.num_classes, cfg.num_attrs, cfg.use_hybrid, cfg.attn_backend)
        self.criterion = SetCriterion(cfg.head, self.coder, cfg.num_classes)
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ features

    def image_features(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """``imgs [I, 3, H, W]`` in [0, 1] -> FPN maps, list of ``[I, C, H / s, W / s]`` for ``self.strides``."""
        x = (imgs.float() - self.mean) / self.std
        dtype = next(self.backbone.parameters()).dtype  # bf16/fp16 under a mixed-precision engine
        return self.neck(self.backbone(x.to(dtype)))

    def frame_bev(self, imgs: torch.Tensor, ego2img: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Single-frame BEV. ``imgs [B, N, 3, H, W]``, ``ego2img [B, N, 4, 4]`` -> (``[B, C, bh, bw]``, FPN maps)."""
        B, N, _, H, W = imgs.shape
        feats = self.image_features(imgs.flatten(0, 1))
        return self.encoder(feats, ego2img, (H, W)), feats

    def frame_indices(self, T: int) -> tuple[int, list[int | None]]:
        """Batch with T frames -> (current index, batch index of every temporal offset or None if absent).

        T == len(offsets): frame t is offset t (any spacing, as the pipeline's ``data.offsets``);
        T == 1: only the current frame (others from a history, or filled); otherwise the T frames are
        taken as consecutive keyframes ending ``max(0, max(offsets))`` frames after the current one.
        """
        offsets = self.cfg.temporal.offsets
        if T == len(offsets):
            return offsets.index(0), list(range(T))
        if T == 1:
            return 0, [0 if o == 0 else None for o in offsets]
        cur = max(0, T - 1 - max(0, max(offsets)))
        return cur, [cur + o if 0 <= cur + o < T else None for o in offsets]

    def temporal_bev(self, batch, cur: int, bev_cur: torch.Tensor, history: BEVHistory | None) -> torch.Tensor:
        """Fuse the current single-frame BEV ``[B, C, H, W]`` with the other frames' (no gradient)."""
        if self.fusion is None:
            return bev_cur
        B = bev_cur.shape[0]
        T = batch.imgs.shape[1]
        offsets = self.cfg.temporal.offsets
        _, idx = self.frame_indices(T)
        bev_aug = batch.bev_aug.to(bev_cur.device).float()
        valid_prev = batch.valid_prev
        frames: list[torch.Tensor] = []
        valid = torch.zeros(B, len(offsets), dtype=torch.bool, device=bev_cur.device)
        others = [i for i, (o, t) in enumerate(zip(offsets, idx)) if o != 0 and t is not None]
        other_bev = {}
        if others:
            ts = [idx[i] for i in others]
            with torch.no_grad(), eval_mode([self.backbone, self.neck, self.encoder]):
                imgs = batch.imgs[:, ts].flatten(0, 1)  # [B * F', N, 3, H, W]
                e2i = batch.ego2img[:, ts].flatten(0, 1)
                bevs, _ = self.frame_bev(imgs, e2i)
            bevs = bevs.view(B, len(ts), *bevs.shape[1:])
            for j, (i, t) in enumerate(zip(others, ts)):
                tr = batch.cur_from_prev[:, t].to(bev_cur.device)  # already between BEV-augmented frames
                other_bev[i] = align_bev(bevs[:, j].to(bev_cur.dtype), tr, self.cfg.encoder.pc_range)
                valid[:, i] = valid_prev[:, t].to(bev_cur.device).bool()
        for i, o in enumerate(offsets):
            if o == 0:
                frames.append(bev_cur)
                valid[:, i] = True
            elif i in other_bev:
                frames.append(other_bev[i])
            else:
                frames.append(self._from_history(batch, cur, o, bev_cur, bev_aug, history, valid[:, i]))
        frames = fill_invalid(frames, valid, offsets.index(0))
        return self.fusion(torch.cat(frames, 1), bev_cur)

    def _from_history(self, batch, cur, offset, bev_cur, bev_aug, history, valid_col) -> torch.Tensor:
        """Aligned past BEVs from ``history`` for one offset (zeros and invalid where unavailable)."""
        out = torch.zeros_like(bev_cur)
        if history is None or offset > 0:
            return out
        for b, scene in enumerate(batch.scene_token):
            m = history.aligned(scene, -offset, batch.ego2global[b, cur], bev_aug[b], self.cfg.encoder.pc_range)
            if m is not None:
                out[b] = m.to(out.device, out.dtype)
                valid_col[b] = True
        return out

    # ------------------------------------------------------------------ heads

    def _perspective(self, feats, batch, cur):
        """Perspective predictions over the current frame's ``B * N`` images and their locations."""
        preds = self.pers_head(feats, self.strides)
        loc = make_locations([tuple(f.shape[-2:]) for f in feats], self.strides, feats[0].device)
        return preds, loc

    def _proposals(self, preds, loc: Locations, batch, cur: int, B: int) -> dict[str, torch.Tensor]:
        e2i = batch.ego2img[:, cur].flatten(0, 1)
        intr = batch.intrinsics[:, cur].flatten(0, 1)
        with torch.no_grad():
            dec = decode_perspective({k: v.detach() for k, v in preds.items()}, loc, e2i, intr, self.cfg.perspective)
        dec = {k: v.reshape(B, -1, *v.shape[2:]) for k, v in dec.items()}
        h = self.cfg.head
        return select_proposals(dec["boxes"], dec["scores"], dec["labels"], dec["cls_prob"], h.num_hybrid,
                                h.proposal_nms_radius, h.proposal_pre_nms)

    def _run(self, batch, history: BEVHistory | None):
        """Shared forward: -> (head outputs, perspective preds or None, locations or None, current index, bev_cur)."""
        imgs = batch.imgs
        B, T = imgs.shape[:2]
        cur, _ = self.frame_indices(T)
        bev_cur, feats = self.frame_bev(imgs[:, cur], batch.ego2img[:, cur])
        bev = self.temporal_bev(batch, cur, bev_cur, history)
        preds = loc = proposals = None
        if self.pers_head is not None:
            preds, loc = self._perspective(feats, batch, cur)
            if self.cfg.use_hybrid:
                proposals = self._proposals(preds, loc, batch, cur, B)
        out = self.head(bev, proposals)
        out["proposals"] = proposals
        out["bev"] = bev
        return out, preds, loc, cur, bev_cur

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        """Training losses: ``{"loss": total, "bev.<term>": ..., "pers.<term>": ...}`` (scalars)."""
        return self.train_outputs(batch)[0]

    def train_outputs(self, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """:meth:`forward_train`'s losses and the intermediate tensors they came from (for distillation).

        Returns ``(losses, out)``: ``out["bev"] [B, C, H, W]`` the fused BEV the head reads, ``out["cls"]
        [Ly, B, G*Q', num_classes]``, ``out["codes"] [Ly, B, G*Q', 10]`` every decoder layer's outputs (centres
        in metres), ``out["attr"]``, ``out["groups"]``, ``out["proposals"]`` (see :class:`BEVHead`).
        """
        out, preds, loc, cur, _ = self._run(batch, None)
        dev = out["cls"].device
        gt_boxes, gt_labels, gt_attrs = batch.detection_targets(dev)
        bev_terms = self.criterion(out, gt_boxes, gt_labels, gt_attrs)
        losses = {f"bev.{k}": v for k, v in bev_terms.items()}
        total = self.cfg.lambda_bev * sum(bev_terms.values())
        if preds is not None:
            H, W = batch.imgs.shape[-2:]
            targets = build_perspective_targets(batch, cur, loc, (H, W), self.cfg.perspective, self.cfg.num_classes)
            e2i = batch.ego2img[:, cur].flatten(0, 1)
            intr = batch.intrinsics[:, cur].flatten(0, 1)
            pers_terms = self.pers_loss(preds, targets, loc, e2i, intr)
            losses.update({f"pers.{k}": v for k, v in pers_terms.items()})
            total = total + self.cfg.lambda_pers * sum(pers_terms.values())
        losses["loss"] = total
        return losses, out

    @torch.no_grad()
    def predict(self, batch, history: BEVHistory | None = None) -> list[dict[str, torch.Tensor]]:
        """Detections per sample: ``boxes [K, 9]`` (current ego frame, bev_aug undone), ``scores [K]``,
        ``labels [K]``, ``attrs [K]`` (-1 none), ``K <= max_detections``. ``history`` (eval) supplies
        and receives single-frame BEVs of earlier calls, keyed by scene."""
        out, _, _, cur, bev_cur = self._run(batch, history)
        bev_aug = batch.bev_aug
        if history is not None:
            aug = bev_aug.to(bev_cur.device).float()
            for b, scene in enumerate(batch.scene_token):
                history.push(scene, batch.ego2global[b, cur], aug[b], bev_cur[b])
        return postprocess(out["cls"][-1], out["codes"][-1], out["attr"][-1], self.coder, bev_aug,
                           self.cfg.head.max_detections)

    @torch.no_grad()
    def predict_first_stage(self, batch) -> list[dict[str, torch.Tensor]]:
        """The first stage alone: the perspective head's proposals for the hybrid queries, as detections.

        Per sample, the ``head.num_hybrid`` proposals that survive the BEV NMS (:func:`select_proposals`):
        ``boxes [K, 9]`` in the un-augmented ego frame of the current frame, ``scores [K]`` (best class
        probability x centerness x 3D confidence), ``labels [K]``, ``attrs [K]`` (-1: not predicted here).
        A diagnostic of the two-stage model (``python -m eval --stage first``): how much the BEV head adds.
        """
        if self.pers_head is None or self.cfg.head.num_hybrid < 1:
            raise ValueError("the first stage needs the perspective head (model.lambda_pers > 0) and "
                             f"model.head.num_hybrid >= 1 (got lambda_pers={self.cfg.lambda_pers}, "
                             f"num_hybrid={self.cfg.head.num_hybrid})")
        B, T = batch.imgs.shape[:2]
        cur, _ = self.frame_indices(T)
        feats = self.image_features(batch.imgs[:, cur].flatten(0, 1))
        preds, loc = self._perspective(feats, batch, cur)
        props = self._proposals(preds, loc, batch, cur, B)
        aug = batch.bev_aug
        out = []
        for b in range(B):
            kept = props["kept"][b]
            boxes = props["boxes"][b][kept].float()
            if aug is not None:
                boxes = transform_boxes(boxes, torch.linalg.inv(aug[b].float().to(boxes.device)))
            labels = props["labels"][b][kept].long()
            out.append({"boxes": boxes, "scores": props["scores"][b][kept].float(), "labels": labels,
                        "attrs": torch.full_like(labels, -1)})
        return out

    def new_history(self) -> BEVHistory:
        """A :class:`BEVHistory` deep enough for this model's past offsets."""
        return BEVHistory(max_frames=max(1, -min(self.cfg.temporal.offsets)))

    def forward(self, batch):
        """``forward_train`` in training mode, ``predict`` otherwise (for engines that call ``model(batch)``)."""
        return self.forward_train(batch) if self.training else self.predict(batch)

