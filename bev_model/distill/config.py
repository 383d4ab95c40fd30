"""Typed configuration of BEVDistill: a student (BEVFormer v2), a teacher (LiDAR) and one switch per term.

YAML (``model:`` section)::

    preset: distill_tiny
    student: {preset: tiny, encoder: {num_layers: 1}}      # any BEVFormer v2 model section
    teacher: {checkpoint: runs/lidar_tiny/checkpoints/step_00001000}
    distill: {dense: true, instance: true, box: true, heatmap: true}

:meth:`DistillConfig.validate` resolves ``student`` and ``teacher.model`` in full (the teacher's model section
is read from the teacher run's ``config.yaml`` when ``teacher.checkpoint`` exists, else it is the
``lidar_tiny`` preset on the student's grid), so the distillation run's own ``config.yaml`` rebuilds the same
model without the teacher's files; and it checks that both BEV grids are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.contracts.checkpoint import CONFIG, WEIGHTS, CheckpointError, read_run_config
from shards.typed_config import ConfigError, to_dict

from ..config import ModelConfig


@dataclass
class TeacherSection:
    """The frozen teacher.

    ``checkpoint``: a teacher run's checkpoint directory (``weights`` inside it; its ``config.yaml`` gives the
    teacher's model). ``random_init``: train against a randomly initialised teacher (tests and overhead
    benchmarks only; seeded with ``seed``). ``model``: the teacher's model section (resolved by ``validate``).
    """

    checkpoint: Path | None = None
    weights: str = WEIGHTS
    random_init: bool = False
    seed: int = 0
    model: dict[str, Any] | None = None


@dataclass
class DistillTerms:
    """One switch and weight per term (the official BEVDistill config's values).

    ``dense``: masked MSE between the student's and the teacher's CenterPoint shared-conv features (3x3
    conv-BN-ReLU "adapters"; the student's trains, the teacher's is frozen), mask = max of GT Gaussians
    (``dense_min_overlap``, radius >= ``dense_min_radius``), ``sum(mask * sum_c (Fs - Ft)^2) / sum(mask)``.
    ``instance``: InfoNCE between projections of both BEV maps sampled at the student's detached predicted
    centres of every decoder layer (``instance_dims``: projection width, 0 = twice the student's channels).
    ``box``: L1 to the teacher's top ``box_topk`` boxes, Hungarian-matched (soft BCE ``box_cost_cls`` + L1
    ``box_cost_l1``), weighted by the teacher's max score squared, normalised by the sum of scores.
    ``heatmap``: the auxiliary CenterPoint heatmap loss on the student BEV (GT Gaussians).
    """

    dense: bool = True
    dense_weight: float = 0.01
    dense_min_overlap: float = 0.1
    dense_min_radius: int = 1
    instance: bool = True
    instance_weight: float = 0.2
    instance_temperature: float = 0.07
    instance_dims: int = 0
    box: bool = True
    box_weight: float = 0.25
    box_topk: int = 50
    box_cost_cls: float = 1.0
    box_cost_l1: float = 0.25
    heatmap: bool = True
    heatmap_weight: float = 1.0
    heatmap_min_overlap: float = 0.1
    heatmap_min_radius: int = 2


@dataclass
class DistillConfig:
    """Student + teacher + terms. ``student``: a BEVFormer v2 model section (``{preset: tiny, ...}``, None = tiny)."""

    student: dict[str, Any] | None = None
    teacher: TeacherSection = field(default_factory=TeacherSection)
    distill: DistillTerms = field(default_factory=DistillTerms)

    def student_config(self) -> ModelConfig:
        from ..registry import model_config_from_dict

        cfg = model_config_from_dict(self.student or {"preset": "tiny"}, prefix="model.student")
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(f"config key 'model.student.preset': the student must be a BEVFormer v2 preset, "
                              f"got a {type(cfg).__name__}")
        return cfg

    def teacher_config(self):
        from ..lidar.config import LidarConfig, grid_of_student
        from ..registry import model_config_from_dict

        data = self.teacher.model
        if data is None:
            data = {"preset": "lidar_tiny", "grid": to_dict(grid_of_student(self.student_config()))}
        cfg = model_config_from_dict(data, prefix="model.teacher.model")
        if not isinstance(cfg, LidarConfig):
            raise ConfigError(f"config key 'model.teacher.model.preset': the teacher must be a LiDAR preset, "
                              f"got a {type(cfg).__name__}")
        return cfg

    @property
    def frame_offsets(self) -> tuple[int, ...]:
        return tuple(self.student_config().temporal.offsets)

    @property
    def needs_points(self) -> bool:
        """The teacher reads the LiDAR points of every training batch."""
        return True

    @property
    def needs_points_in_eval(self) -> bool:
        """The exported student is camera-only."""
        return False

    def validate(self) -> None:
        """Resolve ``student`` and ``teacher.model`` in full, then cross-check; errors name the key at fault."""
        from ..lidar.config import grid_of_student

        student = self.student_config()
        self.student = {"preset": (self.student or {}).get("preset", "tiny"), **to_dict(student)}
        ckpt = self.teacher.checkpoint
        if ckpt is not None and Path(ckpt).is_dir() and (Path(ckpt) / CONFIG).is_file():
            try:
                self.teacher.model = read_run_config(Path(ckpt) / CONFIG)["model"]
            except CheckpointError as e:
                raise ConfigError(f"config key 'model.teacher.checkpoint': {e}") from e
        teacher = self.teacher_config()
        self.teacher.model = {"preset": (self.teacher.model or {}).get("preset", "lidar_tiny"), **to_dict(teacher)}
        s, t = grid_of_student(student), teacher.grid
        if (tuple(s.pc_range), s.bev_h, s.bev_w) != (tuple(t.pc_range), t.bev_h, t.bev_w):
            raise ConfigError(f"config key 'model.teacher.model.grid': the teacher's BEV grid {to_dict(t)} differs "
                              f"from the student's {to_dict(s)} (pc_range, bev_h, bev_w must be equal)")
        if self.distill.dense and not teacher.heatmap.enabled:
            raise ConfigError("config key 'model.distill.dense': needs the teacher's heatmap head "
                              "(teacher.model.heatmap.enabled), whose shared conv is the teacher-side adapter")
        d = self.distill
        for key in ("dense_weight", "instance_weight", "box_weight", "heatmap_weight", "box_cost_cls", "box_cost_l1"):
            if getattr(d, key) < 0:
                raise ConfigError(f"config key 'model.distill.{key}': must be >= 0, got {getattr(d, key)}")
        if d.instance_temperature <= 0:
            raise ConfigError(f"config key 'model.distill.instance_temperature': must be > 0, got {d.instance_temperature}")
        if d.box_topk < 1 or d.instance_dims < 0:
            raise ConfigError("config keys 'model.distill.box_topk' >= 1, 'model.distill.instance_dims' >= 0")
        for key in ("dense_min_overlap", "heatmap_min_overlap"):
            if not 0 < getattr(d, key) < 1:
                raise ConfigError(f"config key 'model.distill.{key}': must be in (0, 1)")
