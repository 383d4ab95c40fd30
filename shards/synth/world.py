"""The synthetic world of one scene: a curved road, the ego driving along it, and actors.

Everything is laid out in road coordinates ``(s, d)``: ``s`` the arc length along
the road's centre line (the ego's lane), ``d`` the lateral offset (positive to the
left). Actors keep a constant ``d`` (their lane) and move with a constant speed
along ``s``, so motion is smooth and consistent across frames; actors of one lane
share a speed, so they never collide. Global coordinates: x, y on a flat ground
(z = 0), metres, as a nuScenes map frame.

Each scene draws its layout from its own generator, seeded by ``(seed, scene
name)``, so the validation scenes are independent of the training scenes.

Lateral layout (``d``, metres, + left), nuScenes-like: the ego's lane in the middle,
kept clear (every actor's footprint at least :data:`EGO_CLEARANCE` from the ego's
path, so no box fills a camera view from a metre or two away); to the right a lane
of traffic going the ego's way, a bike lane, a work zone, kerb-side parking and a
sidewalk; to the left two oncoming lanes, a work zone, parking and a sidewalk. Every
scene places one actor of every class near the ego's path (within the devkit's class
range of some keyframe, in the LiDAR's and radar's view), so every class is scored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from shards.conventions import CLASSES

OTHER = len(CLASSES)
"""Style index of actors whose category is not a detection class."""


@dataclass(frozen=True)
class ClassSpec:
    """Size statistics of a class: mean ``(l, w, h)`` in metres and relative jitter."""

    size: tuple[float, float, float]
    jitter: float = 0.08


CLASS_SPECS: dict[str, ClassSpec] = {
    "car": ClassSpec((4.62, 1.95, 1.73)),
    "truck": ClassSpec((6.93, 2.51, 2.84), 0.12),
    "bus": ClassSpec((10.5, 2.94, 3.47), 0.06),
    "trailer": ClassSpec((12.29, 2.90, 3.87), 0.08),
    "construction_vehicle": ClassSpec((6.37, 2.73, 3.19), 0.1),
    "pedestrian": ClassSpec((0.73, 0.67, 1.77), 0.06),
    "motorcycle": ClassSpec((2.11, 0.77, 1.47), 0.06),
    "bicycle": ClassSpec((1.70, 0.60, 1.28), 0.06),
    "traffic_cone": ClassSpec((0.41, 0.41, 1.07), 0.06),
    "barrier": ClassSpec((0.50, 2.53, 0.98), 0.06),
}

CATEGORIES: dict[str, tuple[tuple[str, float], ...]] = {
    "car": (("vehicle.car", 1.0),),
    "truck": (("vehicle.truck", 1.0),),
    "bus": (("vehicle.bus.rigid", 0.85), ("vehicle.bus.bendy", 0.15)),
    "trailer": (("vehicle.trailer", 1.0),),
    "construction_vehicle": (("vehicle.construction", 1.0),),
    "pedestrian": (
        ("human.pedestrian.adult", 0.8),
        ("human.pedestrian.child", 0.1),
        ("human.pedestrian.construction_worker", 0.05),
        ("human.pedestrian.police_officer", 0.05),
    ),
    "motorcycle": (("vehicle.motorcycle", 1.0),),
    "bicycle": (("vehicle.bicycle", 1.0),),
    "traffic_cone": (("movable_object.trafficcone", 1.0),),
    "barrier": (("movable_object.barrier", 1.0),),
}

OTHER_CATEGORIES: dict[str, tuple[float, float, float]] = {
    "movable_object.pushable_pullable": (0.9, 0.7, 1.0),
    "movable_object.debris": (0.8, 0.8, 0.35),
    "static_object.bicycle_rack": (3.0, 0.8, 0.9),
}
"""Non-detection categories (label -1) placed now and then, with their ``(l, w, h)``."""

ALL_CATEGORIES: tuple[str, ...] = (
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.wheelchair",
    "human.pedestrian.stroller",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.construction_worker",
    "animal",
    "vehicle.car",
    "vehicle.motorcycle",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.truck",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.trailer",
    "movable_object.barrier",
    "movable_object.trafficcone",
    "movable_object.pushable_pullable",
    "movable_object.debris",
    "static_object.bicycle_rack",
)
"""The 23 nuScenes categories (the category table lists them all)."""

SCENE_MARGIN = 80.0
"""Actors are laid out this far (metres of road) before the ego's start and after its end."""

EGO_CLEARANCE = 3.0
"""Metres between the ego's path (``d = 0``) and the nearest point of every actor's footprint."""

TRAFFIC_LANES: tuple[tuple[float, float, float], ...] = ((-5.0, 1.0, 0.1), (5.0, -1.0, 0.05), (8.5, -1.0, 0.1))
"""``(d, direction, p_stopped)`` of the traffic lanes (one with the ego, two oncoming)."""
BIKE_LANE = -7.5
WORK_ZONES = (-9.0, 11.0)
"""``d`` of the rows of cones / barriers, right and left (between the traffic and the parking)."""
KERBS = (-11.4, 13.4)
"""``d`` of the kerb-side parking, right and left."""
SIDEWALK_WALKING: tuple[tuple[float, float], ...] = ((-13.6, 1.0), (-14.4, -1.0), (15.6, -1.0), (16.4, 1.0))
"""``(d, direction)`` of the lines of walking pedestrians."""
SIDEWALK_STANDING = (-15.2, 17.2)
"""``d`` of the lines of standing / sitting people and parked bicycles."""
SHOWCASE_KERB = KERBS[1]
"""The kerb (across the oncoming lanes) where one actor of every class is parked near the ego's path."""
SHOWCASE_OFFSET = (-6.0, 6.0)
"""The showcase row is centred this far (``s``, metres) from the middle of the ego's travel."""


def lateral_extent(size_lw: np.ndarray, yaw_offset: np.ndarray) -> np.ndarray:
    """Half width ``[N]`` of footprints ``(l, w) [N, 2]`` across the road, for headings ``yaw_offset [N]``."""
    size_lw = np.asarray(size_lw, dtype=np.float64).reshape(-1, 2)
    yaw = np.asarray(yaw_offset, dtype=np.float64).reshape(-1)
    return 0.5 * (size_lw[:, 0] * np.abs(np.sin(yaw)) + size_lw[:, 1] * np.abs(np.cos(yaw)))


def scene_rng(seed: int, scene_name: str) -> np.random.Generator:
    """A generator that depends only on ``(seed, scene_name)``."""
    digest = hashlib.sha256(f"{seed}:{scene_name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------- road and ego


@dataclass
class Road:
    """A smooth centre line sampled densely: ``s [S]``, ``xy [S, 2]``, heading ``theta [S]``."""

    s: np.ndarray
    xy: np.ndarray
    theta: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, s_min: float, s_max: float, step: float = 0.25) -> Road:
        s = np.arange(s_min, s_max + step, step)
        curv = np.zeros_like(s)
        for _ in range(2):  # two sinusoids of curvature, |kappa| <= 1/70 m^-1 in total
            amp = rng.uniform(0.0, 1.0 / 140.0)
            wavelength = rng.uniform(120.0, 400.0)
            curv += amp * np.sin(2 * np.pi * s / wavelength + rng.uniform(0, 2 * np.pi))
        theta = rng.uniform(-np.pi, np.pi) + np.concatenate([[0.0], np.cumsum(0.5 * (curv[1:] + curv[:-1]) * step)])
        dxy = np.stack([np.cos(theta), np.sin(theta)], -1)
        xy = np.concatenate([[[0.0, 0.0]], np.cumsum(0.5 * (dxy[1:] + dxy[:-1]) * step, axis=0)])
        xy -= np.array([np.interp(0.0, s, xy[:, 0]), np.interp(0.0, s, xy[:, 1])])  # s = 0 at the origin
        xy += rng.uniform(300.0, 1800.0, size=2)  # a map-like global offset
        return cls(s, xy, theta)

    def place(self, s, d):
        """Road coordinates -> global ``(x [...], y [...], heading [...])`` (heading of the road at ``s``)."""
        s = np.asarray(s, dtype=np.float64)
        if np.any(s < self.s[0]) or np.any(s > self.s[-1]):
            raise ValueError(f"road coordinate s outside [{self.s[0]:.1f}, {self.s[-1]:.1f}]")
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        th = np.interp(s, self.s, self.theta)
        return x - d * np.sin(th), y + d * np.cos(th), th


@dataclass
class EgoMotion:
    """Ego speed ``v(t) = v0 + dv * sin(2 pi t / period + phase)`` (m/s) along the road's centre line."""

    v0: float
    dv: float
    period: float
    phase: float

    def s(self, t):
        """Arc length travelled at time ``t`` (seconds from the scene start); ``s(0) = 0``."""
        w = 2 * np.pi / self.period
        return self.v0 * t + self.dv / w * (np.cos(self.phase) - np.cos(w * np.asarray(t) + self.phase))


# --------------------------------------------------------------------------- actors


@dataclass
class Actors:
    """All actors of a scene (N of them), in road coordinates.

    style ``[N]`` class index (``OTHER`` for non-detection categories); size ``[N, 3]``
    ``(l, w, h)``; d ``[N]`` lane offset; s0 ``[N]`` position at t = 0; speed ``[N]`` ds/dt
    (m/s, signed); yaw_offset ``[N]`` heading relative to the road; tint ``[N]``.
    """

    style: np.ndarray
    category: list[str]
    attribute: list[str]
    size: np.ndarray
    d: np.ndarray
    s0: np.ndarray
    speed: np.ndarray
    yaw_offset: np.ndarray
    tint: np.ndarray

    def __len__(self) -> int:
        return len(self.category)


class _ActorList:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, style, category, attribute, size, d, s0, speed, yaw_offset, tint) -> None:
        gap = abs(d) - float(lateral_extent(np.asarray(size[:2]), yaw_offset)[0])
        if gap < EGO_CLEARANCE:
            raise ValueError(f"{category} at d={d:.2f} m comes within {gap:.2f} m of the ego's path "
                             f"(EGO_CLEARANCE {EGO_CLEARANCE} m): fix the lateral layout")
        self.rows.append((style, category, attribute, size, d, s0, speed, yaw_offset, tint))

    def build(self) -> Actors:
        if not self.rows:
            z = np.zeros(0)
            return Actors(np.zeros(0, np.int64), [], [], np.zeros((0, 3)), z, z, z, z, z)
        cols = list(zip(*self.rows))
        return Actors(
            np.asarray(cols[0], np.int64), list(cols[1]), list(cols[2]), np.asarray(cols[3], np.float64),
            *(np.asarray(c, np.float64) for c in cols[4:]),
        )


def _pick(rng: np.random.Generator, options: dict[str, float]) -> str:
    names = list(options)
    p = np.asarray([options[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _category(rng: np.random.Generator, cls: str) -> str:
    return _pick(rng, dict(CATEGORIES[cls]))


def _size(rng: np.random.Generator, cls: str, category: str) -> tuple[float, float, float]:
    spec = CLASS_SPECS[cls]
    size = np.asarray(spec.size) * (1.0 + spec.jitter * np.clip(rng.standard_normal(3), -2, 2))
    if category == "human.pedestrian.child":
        size *= np.array([0.8, 0.8, 0.72])
    if category == "vehicle.bus.bendy":
        size[0] *= 1.6
    return tuple(float(v) for v in size)


def _fill_lane(rng, s_lo: float, s_hi: float, gap: tuple[float, float], density: float):
    """Yield along-road centre positions from ``s_lo`` to ``s_hi``; the caller sets each footprint."""
    s = s_lo + rng.uniform(0, gap[1]) / density
    while s < s_hi:
        yield s
        s += rng.uniform(*gap) / density


def _moving_range(lo: float, hi: float, speed: float, duration: float) -> tuple[float, float]:
    """Start positions from which an actor of ``speed`` passes through ``[lo, hi]`` during the scene."""
    return (lo - speed * duration, hi) if speed >= 0 else (lo, hi - speed * duration)


@dataclass
class SceneWorld:
    """One scene: road, ego motion, actors; poses and boxes at any time ``t`` (seconds)."""

    name: str
    road: Road
    ego: EgoMotion
    actors: Actors
    duration: float

    def ego_pose(self, t: float) -> np.ndarray:
        """``[4, 4]`` ego -> global at time ``t``."""
        x, y, th = self.road.place(self.ego.s(t), 0.0)
        m = np.eye(4)
        c, s = np.cos(th), np.sin(th)
        m[:2, :2] = [[c, -s], [s, c]]
        m[0, 3], m[1, 3] = x, y
        return m

    def boxes(self, t: float) -> np.ndarray:
        """``[N, 9]`` global box vectors ``[x, y, z, l, w, h, yaw, vx, vy]`` of every actor at ``t``."""
        a = self.actors
        s = a.s0 + a.speed * t
        x, y, th = self.road.place(s, a.d)
        out = np.zeros((len(a), 9))
        out[:, 0], out[:, 1] = x, y
        out[:, 2] = a.size[:, 2] / 2
        out[:, 3:6] = a.size
        out[:, 6] = th + a.yaw_offset
        out[:, 7] = a.speed * np.cos(th)
        out[:, 8] = a.speed * np.sin(th)
        return out


def make_world(seed: int, scene_name: str, duration: float) -> SceneWorld:
    """Lay out scene ``scene_name`` for ``duration`` seconds, deterministically from ``(seed, scene_name)``."""
    rng = scene_rng(seed, scene_name)
    v0 = float(rng.choice([rng.uniform(1.0, 4.0), rng.uniform(4.0, 12.0)], p=[0.2, 0.8]))
    ego = EgoMotion(v0, float(rng.uniform(0.0, min(2.0, v0 * 0.8))), float(rng.uniform(6, 20)),
                    float(rng.uniform(0, 2 * np.pi)))
    s_end = float(max(ego.s(duration), 0.0))
    max_speed = 14.0
    reach = max_speed * duration + SCENE_MARGIN
    road = Road.random(rng, -reach - 40.0, s_end + reach + 40.0)
    lo, hi = -SCENE_MARGIN, s_end + SCENE_MARGIN
    density = float(rng.uniform(0.75, 1.25))
    acts = _ActorList()

    def tint() -> float:
        return float(rng.uniform(0.82, 1.12))

    # Traffic lanes: one speed per lane, vehicles spaced along it.
    for d, direction, p_stop in TRAFFIC_LANES:
        stopped = rng.random() < p_stop
        speed = 0.0 if stopped else direction * float(rng.uniform(3.0, 13.0))
        mix = {"car": 0.45, "truck": 0.18, "bus": 0.14, "motorcycle": 0.1, "trailer": 0.06,
               "construction_vehicle": 0.07}
        s_from, s_to = _moving_range(lo, hi, speed, duration)
        prev_end = -1e9
        for s in _fill_lane(rng, s_from, s_to, (12.0, 70.0), density):
            cls = _pick(rng, mix)
            cat = _category(rng, cls)
            size = _size(rng, cls, cat)
            if s - size[0] / 2 < prev_end + 3.0:
                continue
            prev_end = s + size[0] / 2
            if cls == "motorcycle":
                attr = "cycle.with_rider"
            else:
                attr = "vehicle.moving" if speed != 0.0 else "vehicle.stopped"
            yaw = 0.0 if direction > 0 else np.pi
            acts.add(CLASSES.index(cls), cat, attr, size, d, s, speed, yaw, tint())

    # Bike lane on the right, cyclists riding with the traffic.
    speed = float(rng.uniform(2.5, 6.0))
    for s in _fill_lane(rng, *_moving_range(lo, hi, speed, duration), (25.0, 90.0), density):
        cls = "bicycle" if rng.random() < 0.65 else "motorcycle"
        cat = _category(rng, cls)
        acts.add(CLASSES.index(cls), cat, "cycle.with_rider", _size(rng, cls, cat), BIKE_LANE, s, speed, 0.0,
                 tint())

    # Kerb-side parking on both sides (static), now and then a parked two-wheeler or a cart. First a
    # showcase near the ego's path, on the kerb across the oncoming lanes (oncoming traffic hides it only
    # for moments): people waiting at the kerb and one parked actor of every other class (a stopped bus
    # at a stop), small ones nearest, so every scene shows every class within its class range. Then the
    # kerbs are filled around them.
    taken: dict[float, list[tuple[float, float]]] = {d: [] for d in KERBS}

    def reserve(d: float, a: float, b: float) -> bool:
        if any(a < hi_ and lo_ < b for lo_, hi_ in taken[d]):
            return False
        taken[d].append((a, b))
        return True

    def parked(cls: str) -> tuple[int, str, str, tuple[float, float, float]]:
        """``(style, category, attribute, size)`` of a parked actor of ``cls`` (or "other")."""
        if cls == "other":
            cat = str(rng.choice(list(OTHER_CATEGORIES)))
            return OTHER, cat, "", OTHER_CATEGORIES[cat]
        cat = _category(rng, cls)
        attr = {"motorcycle": "cycle.without_rider", "bicycle": "cycle.without_rider",
                "bus": "vehicle.stopped"}.get(cls, "vehicle.parked")
        return CLASSES.index(cls), cat, attr, _size(rng, cls, cat)

    def park(spec: tuple, d: float, s: float, gap: float) -> bool:
        """Park ``spec`` (from ``parked``) centred at ``s`` if the kerb is free there."""
        style, cat, attr, size = spec
        if not reserve(d, s - size[0] / 2 - gap, s + size[0] / 2 + gap):
            return False
        yaw = 0.0 if (rng.random() < 0.7 or attr == "vehicle.stopped") else np.pi
        acts.add(style, cat, attr, size, d, s, 0.0, yaw + rng.normal(0, 0.03), tint())
        return True

    # The showcase row, centred where the ego is mid-scene: people waiting at the kerb in the middle, a
    # bicycle and a motorcycle beside them, the five vehicle classes alternately before and after.
    d = SHOWCASE_KERB
    mid = s_end / 2 + float(rng.uniform(*SHOWCASE_OFFSET))
    reserve(d, mid - 2.0, mid + 2.0)
    for offset in rng.choice([-1.2, 0.0, 1.2], size=int(rng.integers(1, 4)), replace=False):
        cat = _category(rng, "pedestrian")
        acts.add(CLASSES.index("pedestrian"), cat, "pedestrian.standing", _size(rng, "pedestrian", cat), d,
                 mid + float(offset), 0.0, rng.uniform(-np.pi, np.pi), tint())
    ends = [mid - 2.0, mid + 2.0]  # the row's free ends: before, after
    big = ["bus", "trailer", "construction_vehicle", "truck", "car"]
    rng.shuffle(big)
    for j, cls in enumerate(["bicycle", "motorcycle", *big]):
        spec = parked(cls)
        half, gap = spec[3][0] / 2, float(rng.uniform(0.5, 3.0))
        after = j % 2 == 0
        centre = ends[1] + gap + half if after else ends[0] - gap - half
        park(spec, d, centre, 0.0)
        ends[int(after)] = centre + half if after else centre - half
    for d in KERBS:
        for s in _fill_lane(rng, lo, hi, (15.0, 70.0), density):
            park(parked(_pick(rng, {"car": 0.4, "truck": 0.14, "trailer": 0.12, "construction_vehicle": 0.12,
                                    "motorcycle": 0.08, "bicycle": 0.08, "other": 0.06})), d, s, 0.5)

    # Work zones: rows of cones or barriers between the traffic and the parking. Every scene has a cone
    # row and a barrier row one after the other near the ego's mid-scene position, across the oncoming
    # lanes, and maybe more anywhere on either side (where they do not overlap a row already there).
    zone_taken: dict[float, list[tuple[float, float]]] = {d: [] for d in WORK_ZONES}
    first = ["traffic_cone", "barrier"]
    rng.shuffle(first)
    z_start = s_end / 2 + float(rng.uniform(*SHOWCASE_OFFSET)) - 10.0
    zones = []
    for cls in first:
        z_len = float(rng.uniform(6.0, 12.0))
        zones.append((cls, WORK_ZONES[1], z_start, z_len))
        z_start += z_len + float(rng.uniform(1.0, 4.0))
    for _ in range(2):
        if rng.random() < 0.5:
            zones.append(("traffic_cone" if rng.random() < 0.5 else "barrier",
                          WORK_ZONES[0] if rng.random() < 0.7 else WORK_ZONES[1],
                          float(rng.uniform(lo, hi - 20.0)), float(rng.uniform(6.0, 15.0))))
    for cls, d, z_start, z_len in zones:
        if any(z_start - 1.0 < b and a < z_start + z_len + 1.0 for a, b in zone_taken[d]):
            continue
        zone_taken[d].append((z_start, z_start + z_len))
        step = float(rng.uniform(2.2, 3.2)) if cls == "traffic_cone" else float(rng.uniform(2.8, 3.4))
        for s in np.arange(z_start, z_start + z_len, step):
            cat = _category(rng, cls)
            size = _size(rng, cls, cat)
            yaw = rng.uniform(-np.pi, np.pi) if cls == "traffic_cone" else np.pi / 2 + rng.normal(0, 0.05)
            acts.add(CLASSES.index(cls), cat, "", size, d, float(s), 0.0, yaw, tint())

    # Sidewalks: two walking lines and one line of standing or sitting people per side.
    for d, direction in SIDEWALK_WALKING:
        speed = direction * float(rng.uniform(0.9, 1.6))
        for s in _fill_lane(rng, *_moving_range(lo, hi, speed, duration), (18.0, 130.0), density):
            cat = _category(rng, "pedestrian")
            yaw = 0.0 if direction > 0 else np.pi
            acts.add(CLASSES.index("pedestrian"), cat, "pedestrian.moving", _size(rng, "pedestrian", cat), d, s,
                     speed, yaw + rng.normal(0, 0.05), tint())
    for d in SIDEWALK_STANDING:
        for s in _fill_lane(rng, lo, hi, (16.0, 100.0), density):
            what = _pick(rng, {"standing": 0.6, "sitting": 0.15, "bicycle": 0.15, "other": 0.1})
            if what == "other":
                cat = str(rng.choice(list(OTHER_CATEGORIES)[:2]))
                acts.add(OTHER, cat, "", OTHER_CATEGORIES[cat], d, s, 0.0, rng.uniform(-np.pi, np.pi), tint())
            elif what == "bicycle":
                cat = _category(rng, "bicycle")
                acts.add(CLASSES.index("bicycle"), cat, "cycle.without_rider", _size(rng, "bicycle", cat), d, s,
                         0.0, np.pi / 2 + rng.normal(0, 0.1), tint())
            else:
                cat = _category(rng, "pedestrian")
                size = list(_size(rng, "pedestrian", cat))
                attr = "pedestrian.standing"
                if what == "sitting":
                    size[2] *= 0.65
                    attr = "pedestrian.sitting_lying_down"
                acts.add(CLASSES.index("pedestrian"), cat, attr, tuple(size), d, s, 0.0,
                         rng.uniform(-np.pi, np.pi), tint())

    return SceneWorld(scene_name, road, ego, acts.build(), duration)
