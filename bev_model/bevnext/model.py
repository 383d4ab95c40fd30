"""BEVNeXt: image backbone -> FPN (stride 8) -> depth net + CRF -> frustum lift (current + history frames)
-> per-frame pre-process -> Res2Fusion -> Res2Net BEV backbone + LSS-FPN -> heatmap head -> perspective
refinement -> regression head.

``forward_train(batch)`` -> ``{"loss", "depth.bce", "det.heatmap", "det.reg", "det.attr"}``; needs
``batch.points`` (LiDAR in the augmented ego frame of the current frame) for the depth targets.
``predict(batch, history=None)`` -> per-sample detections in the un-augmented ego frame.

Frames: a batch with ``T == len(temporal.offsets)`` frames lifts all of them (frame t = offset t, past
frames under ``no_grad`` with BN in eval mode, through ``ego2img[:, t] @ inv(cur_from_prev[:, t])``, i.e.
sensor(t-k) -> ego(t): ego motion is absorbed in the lift). A ``T == 1`` batch (streaming eval) takes its
past frames from a :class:`FrustumHistory` (the depth and context of earlier calls, re-lifted into the
current frame); frames not available yet repeat the nearest available one toward the current frame, as the
pipeline fills a window at a scene start.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import Backbone
from ..config import NeckConfig
from ..heatmap import gaussian_focal_loss
from ..neck import FPNNeck
from ..temporal import eval_mode
from .bev import BEVEncoder, PreBEV
from .config import BEVNeXtConfig
from .depth import DepthNet, MeanFieldCRF, camera_params, depth_loss, depth_targets, patch_colours
from .head import (
    PerspectiveRefinement,
    ProposalHead,
    RegHead,
    center_targets,
    decode,
    gather_code,
)
from .lift import frustum, lift

STAGE2_DROP = ("bev_encoder.", "proposal_head.", "refine.", "reg_head.")
"""Key prefixes stage 2 discards from the stage-1 weights (the BEV encoder and the heads), as the paper."""




@dataclass
class _Frame:
    ego2global: torch.Tensor  # [4, 4] float64, CPU
    bev_aug: torch.Tensor  # [4, 4] float64, CPU
    ego2img: torch.Tensor  # [N, 4, 4]
    depth: torch.Tensor  # [N, D, h, w]
    context: torch.Tensor  # [N, C, h, w]


class FrustumHistory:
    """Per scene, the last ``max_frames`` frames' lift inputs (depth, context, ego2img, poses), oldest first.

    Consecutive calls of a scene are taken as consecutive keyframes; a frame with the same ``ego2global`` as
    the newest stored one is not stored twice; at most ``max_scenes`` scenes (least recently used dropped).
    """

    def __init__(self, max_frames: int, max_scenes: int = 16) -> None:
        self.max_frames = max_frames
        self.max_scenes = max_scenes
        self._scenes: OrderedDict[str, deque[_Frame]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._scenes)

    def past(self, scene: str, steps_back: int) -> _Frame | None:
        """The frame ``steps_back`` keyframes ago, else the oldest stored one, else None (nothing stored)."""
        frames = self._scenes.get(scene)
        if not frames:
            return None
        return frames[-min(steps_back, len(frames))]

    def push(self, scene: str, frame: _Frame) -> None:
        if self.max_frames < 1:
            return
        frames = self._scenes.pop(scene, None) or deque(maxlen=self.max_frames)
        if not frames or not torch.allclose(frames[-1].ego2global, frame.ego2global):
            frames.append(frame)
        self._scenes[scene] = frames
        while len(self._scenes) > self.max_scenes:
            self._scenes.popitem(last=False)


class BEVNeXt(nn.Module):
    """The detector. Build with :func:`bev_model.build_model` (preset ``bevnext_tiny`` / ``bevnext_r50``)."""

    def __init__(self, cfg: BEVNeXtConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.grid = cfg.bev.grid
        C = cfg.bev.channels
        self.backbone = Backbone(cfg.backbone)
        self.neck = FPNNeck(self.backbone.out_channels,
                            NeckConfig(out_channels=cfg.neck_channels, num_levels=len(cfg.backbone.out_strides)))
        self.depth_net = DepthNet(cfg.neck_channels, C, cfg.depth)
        d = cfg.depth
        self.crf = None if d.crf == "off" else MeanFieldCRF(
            d.crf_iters, d.crf_w_init, d.zeta_faithful if d.crf == "faithful" else d.zeta_active)
        self.colour_scale = 255.0 if d.crf == "faithful" else 1.0
        self.pre_bev = PreBEV(C, cfg.bev.pre_blocks)
        self.bev_encoder = BEVEncoder(cfg.bev, cfg.temporal)
        self.proposal_head = ProposalHead(cfg.bev.neck_channels, cfg.head.share_channels, cfg.num_classes)
        self.refine = PerspectiveRefinement(cfg) if cfg.refine.enabled else None
        self.reg_head = RegHead(C if cfg.refine.enabled else cfg.bev.neck_channels, cfg.head.share_channels,
                                cfg.num_attrs)
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("code_weights", torch.tensor(cfg.head.code_weights), persistent=False)
        self._frustum: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ per frame

    def frustum_points(self, image_hw: tuple[int, int], device) -> torch.Tensor:
        key = (tuple(image_hw), str(device), torch.is_inference_mode_enabled())  # no inference tensors in training
        if key not in self._frustum:
            self._frustum[key] = frustum(image_hw, self.cfg.depth, device)
        return self._frustum[key]

    def depth_and_context(self, imgs: torch.Tensor, cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``imgs [B, N, 3, H, W]`` in [0, 1], ``cams [B, N, 27]`` -> (CRF depth ``[B N, D, h, w]`` float32,
        context ``[B N, C, h, w]``)."""
        x = (imgs.flatten(0, 1).float() - self.mean) / self.std
        dtype = next(self.backbone.parameters()).dtype
        feat = self.neck(self.backbone(x.to(dtype)))[0]
        logits, context = self.depth_net(feat, cams.flatten(0, 1))
        if self.crf is None:
            return logits.float().softmax(1), context
        colour = patch_colours(imgs.flatten(0, 1), self.cfg.depth.stride, self.colour_scale)
        if colour.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"image size {tuple(imgs.shape[-2:])}: patch colours {tuple(colour.shape[-2:])} do not "
                             f"match the stride-{self.cfg.depth.stride} feature {tuple(logits.shape[-2:])}")
        return self.crf(logits, colour), context

    def lift_frame(self, depth: torch.Tensor, context: torch.Tensor, ego2img: torch.Tensor,
                   image_hw: tuple[int, int]) -> torch.Tensor:
        """CRF depth ``[B N, D, h, w]``, context ``[B N, C, h, w]``, ``ego2img [B, N, 4, 4]`` -> pre-processed BEV
        ``[B, C, H, W]``."""
        B, N = ego2img.shape[:2]
        fr = self.frustum_points(image_hw, depth.device)
        bev = lift(depth.view(B, N, *depth.shape[1:]), context.view(B, N, *context.shape[1:]), ego2img, fr, self.grid,
                   self.cfg.bev.pool)
        return self.pre_bev(bev)

    # ------------------------------------------------------------------ frames

    def frame_index(self, T: int) -> int:
        offsets = self.cfg.temporal.offsets
        if T == len(offsets):
            return T - 1
        if T == 1:
            return 0
        raise ValueError(f"batch has {T} frames; the model needs 1 or len(temporal.offsets) = {len(offsets)} "
                         f"(offsets {list(offsets)}; set data.offsets to match)")

    def camera_inputs(self, batch, t: int) -> torch.Tensor:
        """The depth net's camera numbers ``[B, N, 27]`` of frame ``t`` of ``batch`` (``depth.camera_params``)."""
        aug = batch.bev_aug.to(batch.imgs.device).float()
        return camera_params(batch.intrinsics[:, t].float(), batch.img_aug[:, t].float(), aug,
                             batch.cam2ego[:, t].float(), tuple(batch.imgs.shape[-2:]))

    def _run(self, batch, history: FrustumHistory | None):
        imgs = batch.imgs
        B, T, N = imgs.shape[:3]
        image_hw = tuple(imgs.shape[-2:])
        cur = self.frame_index(T)
        depth, context = self.depth_and_context(imgs[:, cur], self.camera_inputs(batch, cur))
        e2i_cur = batch.ego2img[:, cur].float()
        frames = [self.lift_frame(depth, context, e2i_cur, image_hw)]
        offsets = self.cfg.temporal.offsets
        past = list(reversed(offsets[:-1]))  # newest past first
        if past:
            with torch.no_grad(), eval_mode([self.backbone, self.neck, self.depth_net, self.pre_bev]):
                if T == len(offsets):
                    for t in range(T - 2, -1, -1):
                        d, c = self.depth_and_context(imgs[:, t], self.camera_inputs(batch, t))
                        e2i = batch.ego2img[:, t].float() @ torch.linalg.inv(batch.cur_from_prev[:, t].float())
                        frames.append(self.lift_frame(d, c, e2i, image_hw))
                else:
                    frames += self._history_frames(batch, history, past, depth, context, e2i_cur, image_hw, frames[0])
        stacked = torch.stack(frames[::-1], 1)  # [B, F, C, H, W], oldest first
        bev = self.bev_encoder(stacked)
        heat = self.proposal_head(bev)
        if self.refine is not None:
            bev = self.refine(bev, context, depth, e2i_cur, image_hw)
        reg = self.reg_head(bev)
        return {"heat": heat, "reg": reg, "depth": depth, "cur": cur, "context": context, "image_hw": image_hw}

    def _history_frames(self, batch, history, past, depth, context, e2i_cur, image_hw, bev_cur) -> list[torch.Tensor]:
        """Past frames of a T == 1 batch from ``history``, re-lifted into the current frame (newest first)."""
        B, N = e2i_cur.shape[:2]
        if history is None:
            return [bev_cur] * len(past)
        aug = batch.bev_aug.to(e2i_cur.device).float()
        out = []
        for o in past:
            maps = []
            for b, scene in enumerate(batch.scene_token):
                f = history.past(scene, -o)
                if f is None:
                    maps.append(bev_cur[b])
                    continue
                e2g_cur = batch.ego2global[b, -1].double().cpu()
                cfp = aug[b].double().cpu() @ torch.linalg.inv(e2g_cur) @ f.ego2global @ torch.linalg.inv(f.bev_aug)
                e2i = f.ego2img.to(e2i_cur.device) @ torch.linalg.inv(cfp).float().to(e2i_cur.device)
                maps.append(self.lift_frame(f.depth.to(depth.device), f.context.to(context.device), e2i[None],
                                            image_hw)[0])
            out.append(torch.stack(maps))
        return out

    # ------------------------------------------------------------------ API

    def _check_points(self, batch) -> list[torch.Tensor]:
        pts = batch.points
        if pts is None or any(p is None for p in pts):
            raise ValueError(
                "BEVNeXt (model config BEVNeXtConfig, preset bevnext_*) trains with LiDAR depth supervision "
                "(model.depth): this training batch has no `points`. Build the shards with LiDAR "
                "(`python -m shards build --lidar`) and load them (`data.load_points: true`).")
        return pts

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        """Training losses: ``{"loss", "depth.bce", "det.heatmap", "det.reg", "det.attr"}`` (scalars)."""
        points = self._check_points(batch)
        out = self._run(batch, None)
        cfg = self.cfg
        cur = out["cur"]
        tgt_depth = depth_targets(points, batch.ego2img[:, cur].float(), out["image_hw"], cfg.depth)
        l_depth = depth_loss(out["depth"], tgt_depth.flatten(0, 1), cfg.depth.loss_weight)
        dev = out["heat"].device
        boxes, labels, attrs = batch.detection_targets(dev)
        t = center_targets(boxes, labels, attrs, self.grid, cfg.num_classes, cfg.head.gaussian_overlap,
                           cfg.head.min_radius)
        l_heat = gaussian_focal_loss(out["heat"], t["heatmap"])
        pred = gather_code(out["reg"], t["ind"]).float()  # [B, M, 10]
        target = t["code"]
        w = self.code_weights[None, None] * t["mask"][..., None] * torch.isfinite(target)
        num = t["mask"].sum().clamp(min=1).float()
        l_reg = ((pred - torch.nan_to_num(target)).abs() * w).sum() / num
        attr_logits = out["reg"]["attr"].flatten(2).gather(
            2, t["ind"][:, None].expand(-1, cfg.num_attrs, -1)).transpose(1, 2).float()  # [B, M, A]
        has = t["mask"] & (t["attr"] >= 0)
        l_attr = (torch.nn.functional.cross_entropy(attr_logits[has], t["attr"][has], reduction="sum") / num
                  if bool(has.any()) else attr_logits.sum() * 0.0)
        losses = {"depth.bce": l_depth, "det.heatmap": cfg.head.weight_heatmap * l_heat,
                  "det.reg": cfg.head.weight_reg * l_reg, "det.attr": cfg.head.weight_attr * l_attr}
        losses["loss"] = sum(losses.values())
        return losses

    @torch.no_grad()
    def predict(self, batch, history: FrustumHistory | None = None) -> list[dict[str, torch.Tensor]]:
        """Detections per sample: ``boxes [K, 9]`` (un-augmented ego frame of the current frame), ``scores [K]``,
        ``labels [K]``, ``attrs [K]`` (-1 none). ``history`` (T == 1 batches) supplies and receives past frames."""
        out = self.predict_maps(batch, history)
        return decode(out["heat"].float(), {k: v.float() for k, v in out["reg"].items()}, self.grid, self.cfg,
                      batch.bev_aug)

    @torch.no_grad()
    def predict_maps(self, batch, history: FrustumHistory | None = None) -> dict:
        """The dense outputs before decoding: ``heat [B, K, H, W]`` logits and ``reg`` (``REG_HEADS`` maps + ``attr``,
        each ``[B, c, H, W]``) in the augmented frame; ``history`` as :meth:`predict`."""
        out = self._run(batch, history)
        B = out["heat"].shape[0]
        if history is not None:
            aug = batch.bev_aug.to(out["heat"].device).float()
            N = batch.imgs.shape[2]
            depth = out["depth"].view(B, N, *out["depth"].shape[1:])
            context = out["context"].view(B, N, *out["context"].shape[1:])
            for b, scene in enumerate(batch.scene_token):
                history.push(scene, _Frame(batch.ego2global[b, out["cur"]].double().cpu(), aug[b].double().cpu(),
                                           batch.ego2img[b, out["cur"]].float(), depth[b], context[b]))
        return out

    def new_history(self) -> FrustumHistory:
        return FrustumHistory(max_frames=-min(self.cfg.temporal.offsets))

    def forward(self, batch):
        """``forward_train`` in training mode, ``predict`` otherwise (for engines that call ``model(batch)``)."""
        return self.forward_train(batch) if self.training else self.predict(batch)

