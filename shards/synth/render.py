"""Numba kernels of the synthetic world: camera rendering and LiDAR / radar ray casting.

The scene is a flat textured ground (z = 0), a sky, and solid boxes. A camera
image is drawn by casting one ray per pixel through ``K^-1 [u, v, 1]`` (pixel
centres at integer coordinates): first against the ground / sky, then, box by box
over each box's projected rectangle, against the box (slab test) with a depth
test (z-buffer), so the nearest surface wins. Boxes are shaded per face (a fixed
sun), carry a per-class colour and texture and heading cues (light front with a
dark windscreen, darker back), and fade into haze with distance.

Boxes are passed as ``[N, 7]`` global ``[x, y, z, l, w, h, yaw]``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from shards.conventions import CLASSES

PALETTE = np.array(
    [
        [220, 35, 35],  # car: red
        [35, 70, 225],  # truck: blue
        [235, 205, 25],  # bus: yellow
        [135, 45, 195],  # trailer: purple
        [250, 135, 10],  # construction_vehicle: orange
        [30, 185, 55],  # pedestrian: green
        [15, 200, 210],  # motorcycle: cyan
        [225, 45, 200],  # bicycle: magenta
        [255, 95, 150],  # traffic_cone: pink
        [125, 150, 45],  # barrier: olive
        [125, 115, 105],  # other categories: grey-brown
    ],
    dtype=np.float64,
) / 255.0
"""Base colour per style (class index; the last row for non-detection categories), RGB in [0, 1]."""
assert PALETTE.shape[0] == len(CLASSES) + 1

SKY_HORIZON = np.array([0.80, 0.86, 0.92])
SKY_ZENITH = np.array([0.33, 0.52, 0.84])
FOG_DISTANCE = 140.0
SUN = np.array([0.35, 0.25, 0.90]) / np.linalg.norm([0.35, 0.25, 0.90])

# style indices used inside the kernels
_CAR, _TRUCK, _BUS, _TRAILER, _CONSTR, _PED, _MOTO, _BIKE, _CONE, _BARRIER = range(10)


@njit(cache=True, inline="always")
def _hash2(ix: int, iy: int) -> float:
    h = (ix * 374761393 + iy * 668265263) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h / 4294967296.0


@njit(cache=True, inline="always")
def _value_noise(x: float, y: float) -> float:
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    fx = fx * fx * (3.0 - 2.0 * fx)
    fy = fy * fy * (3.0 - 2.0 * fy)
    a = _hash2(ix, iy)
    b = _hash2(ix + 1, iy)
    c = _hash2(ix, iy + 1)
    d = _hash2(ix + 1, iy + 1)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


@njit(cache=True, inline="always")
def ground_shade(x: float, y: float) -> float:
    """Grey level of the ground at global ``(x, y)``: noisy asphalt with a 4 m grid of light lines."""
    g = 0.34 + 0.12 * (_value_noise(x * 0.35, y * 0.35) - 0.5) + 0.08 * (_value_noise(x * 2.3, y * 2.3) - 0.5)
    fx = x * 0.25 - math.floor(x * 0.25)
    fy = y * 0.25 - math.floor(y * 0.25)
    if fx < 0.03 or fy < 0.03:
        g = 0.55
    return g


@njit(cache=True, inline="always")
def _ray_box(ox, oy, oz, dx, dy, dz, bx, by, bz, hl, hw, hh, c, s):
    """Slab test of a ray against an oriented box. Returns (t, axis, sign, local hit x, y, z); t < 0: miss."""
    px, py, pz = ox - bx, oy - by, oz - bz
    lox, loy, loz = c * px + s * py, -s * px + c * py, pz
    ldx, ldy, ldz = c * dx + s * dy, -s * dx + c * dy, dz
    tmin, tmax = -1e30, 1e30
    axis, sign = -1, 0
    for k in range(3):
        if k == 0:
            o, d, h = lox, ldx, hl
        elif k == 1:
            o, d, h = loy, ldy, hw
        else:
            o, d, h = loz, ldz, hh
        if abs(d) < 1e-12:
            if abs(o) > h:
                return -1.0, -1, 0, 0.0, 0.0, 0.0
            continue
        t1, t2 = (-h - o) / d, (h - o) / d
        sg = -1
        if t1 > t2:
            t1, t2 = t2, t1
            sg = 1
        if t1 > tmin:
            tmin, axis, sign = t1, k, sg
        if t2 < tmax:
            tmax = t2
        if tmin > tmax:
            return -1.0, -1, 0, 0.0, 0.0, 0.0
    if tmin <= 1e-6 or axis < 0:
        return -1.0, -1, 0, 0.0, 0.0, 0.0
    return tmin, axis, sign, lox + tmin * ldx, loy + tmin * ldy, loz + tmin * ldz


@njit(cache=True, inline="always")
def _face_texture(style, axis, sign, lx, ly, lz, hl, hw, hh):
    """Multiplicative brightness of a box surface point (keeps the class colour's hue)."""
    # face-local coordinates (u, v) and the face's half extents
    if axis == 0:
        u, v, hu, hv = ly, lz, hw, hh
    elif axis == 1:
        u, v, hu, hv = lx, lz, hl, hh
    else:
        u, v, hu, hv = lx, ly, hl, hw
    m = 1.0
    edge = min(0.07, 0.12 * min(hu, hv))
    if hu - abs(u) < edge or hv - abs(v) < edge:
        return 0.5
    period = 0.6
    if style == _PED or style == _CONE or style == _BIKE or style == _MOTO:
        period = 0.2
    elif style == _BUS or style == _TRAILER or style == _TRUCK:
        period = 1.0
    if (math.floor((u + 50.0) / period) + math.floor((v + 50.0) / period)) % 2 == 0:
        m *= 1.1
    else:
        m *= 0.92
    zr = lz / hh  # -1 bottom, +1 top
    vehicle = style == _CAR or style == _TRUCK or style == _BUS or style == _CONSTR or style == _TRAILER
    if vehicle or style == _MOTO or style == _BIKE or style == _PED:
        if axis == 0 and sign > 0:  # front: light, with a dark windscreen band on top
            m *= 0.45 if (zr > 0.35 and style != _PED) else 1.2
        elif axis == 0 and sign < 0:  # back: darker, with a dark lower band
            m *= 0.5 if zr < -0.3 else 0.75
        elif axis == 1 and vehicle and 0.3 < zr < 0.8:  # side windows
            m *= 0.6
    if style == _PED and zr > 0.7:
        m *= 1.25
    if style == _CONE and math.floor((lz + 10.0) / 0.22) % 2 == 0:
        m *= 0.55
    if style == _BARRIER and axis == 1 and math.floor((u + v + 50.0) / 0.45) % 2 == 0:
        m *= 0.6
    return m


@njit(cache=True, nogil=True)
def render_camera(kinv, rot, origin, boxes, styles, tints, rects, palette, sun, sky_h, sky_z, fog_dist,
                  img, ids, total):
    """Render one camera image (releases the GIL: cameras render in parallel threads).

    Args:
        kinv: ``[3, 3]`` inverse intrinsics. rot: ``[3, 3]`` camera -> global rotation.
        origin: ``[3]`` camera centre (global). boxes: ``[N, 7]`` global boxes.
        styles: ``[N]`` int64 palette rows. tints: ``[N]`` brightness factors.
        rects: ``[N, 4]`` int64 pixel rectangles ``(u0, u1, v0, v1)`` (half-open) to test each box in.
        palette: ``[S, 3]``. sun: ``[3]`` unit light direction. sky_h, sky_z: ``[3]`` horizon / zenith colours.
        img: out ``[H, W, 3]`` uint8. ids: out ``[H, W]`` int32 box index per pixel (-1 ground, -2 sky).
        total: out ``[N]`` int64, pixels each box covers ignoring occlusion (added to).
    """
    h_img, w_img = ids.shape
    n_box = boxes.shape[0]
    row_total = np.zeros((h_img, n_box), dtype=np.int64)
    ox, oy, oz = origin[0], origin[1], origin[2]
    for v in range(h_img):
        depth = np.empty(w_img)
        col = np.empty((w_img, 3))
        # ground and sky
        for u in range(w_img):
            cx = kinv[0, 0] * u + kinv[0, 1] * v + kinv[0, 2]
            cy = kinv[1, 0] * u + kinv[1, 1] * v + kinv[1, 2]
            cz = kinv[2, 0] * u + kinv[2, 1] * v + kinv[2, 2]
            dz = rot[2, 0] * cx + rot[2, 1] * cy + rot[2, 2] * cz
            if dz < -1e-9:
                dx = rot[0, 0] * cx + rot[0, 1] * cy + rot[0, 2] * cz
                dy = rot[1, 0] * cx + rot[1, 1] * cy + rot[1, 2] * cz
                t = -oz / dz
                g = ground_shade(ox + t * dx, oy + t * dy)
                depth[u] = t
                col[u, 0] = g
                col[u, 1] = g
                col[u, 2] = g * 1.04
                ids[v, u] = -1
            else:
                nrm = math.sqrt(cx * cx + cy * cy + cz * cz)
                e = min(1.0, max(0.0, 3.0 * dz / nrm))
                for k in range(3):
                    col[u, k] = sky_h[k] * (1 - e) + sky_z[k] * e
                depth[u] = 1e30
                ids[v, u] = -2
        # boxes, nearest wins (z-buffer)
        for b in range(n_box):
            if v < rects[b, 2] or v >= rects[b, 3]:
                continue
            bx, by, bz = boxes[b, 0], boxes[b, 1], boxes[b, 2]
            hl, hw, hh = boxes[b, 3] / 2, boxes[b, 4] / 2, boxes[b, 5] / 2
            c, s = math.cos(boxes[b, 6]), math.sin(boxes[b, 6])
            st = styles[b]
            for u in range(rects[b, 0], rects[b, 1]):
                cx = kinv[0, 0] * u + kinv[0, 1] * v + kinv[0, 2]
                cy = kinv[1, 0] * u + kinv[1, 1] * v + kinv[1, 2]
                cz = kinv[2, 0] * u + kinv[2, 1] * v + kinv[2, 2]
                dx = rot[0, 0] * cx + rot[0, 1] * cy + rot[0, 2] * cz
                dy = rot[1, 0] * cx + rot[1, 1] * cy + rot[1, 2] * cz
                dz = rot[2, 0] * cx + rot[2, 1] * cy + rot[2, 2] * cz
                t, axis, sign, lx, ly, lz = _ray_box(ox, oy, oz, dx, dy, dz, bx, by, bz, hl, hw, hh, c, s)
                if t <= 0.0:
                    continue
                row_total[v, b] += 1
                if t >= depth[u]:
                    continue
                depth[u] = t
                ids[v, u] = b
                # world normal of the face hit
                if axis == 2:
                    nx, ny, nz = 0.0, 0.0, float(sign)
                elif axis == 0:
                    nx, ny, nz = sign * c, sign * s, 0.0
                else:
                    nx, ny, nz = -sign * s, sign * c, 0.0
                shade = 0.5 + 0.5 * max(0.0, nx * sun[0] + ny * sun[1] + nz * sun[2])
                m = shade * tints[b] * _face_texture(st, axis, sign, lx, ly, lz, hl, hw, hh)
                for k in range(3):
                    col[u, k] = min(1.0, palette[st, k] * m)
        # haze with distance, then quantise
        for u in range(w_img):
            f = 0.0
            if ids[v, u] != -2:
                cx = kinv[0, 0] * u + kinv[0, 1] * v + kinv[0, 2]
                cy = kinv[1, 0] * u + kinv[1, 1] * v + kinv[1, 2]
                cz = kinv[2, 0] * u + kinv[2, 1] * v + kinv[2, 2]
                f = 1.0 - math.exp(-depth[u] * math.sqrt(cx * cx + cy * cy + cz * cz) / fog_dist)
            for k in range(3):
                x = col[u, k] * (1 - f) + sky_h[k] * f
                img[v, u, k] = np.uint8(min(255.0, max(0.0, x * 255.0 + 0.5)))
    for b in range(n_box):
        for v in range(h_img):
            total[b] += row_total[v, b]


@njit(cache=True, nogil=True)
def raycast(origin, dirs, az0, boxes, max_range, t_out, id_out):
    """Cast a spinning sensor's rays against ground and boxes.

    Args:
        origin: ``[3]`` sensor centre (global). dirs: ``[B, A, 3]`` global unit directions; azimuth
            column ``j`` points at global azimuth ``az0 + 2 pi j / A``. boxes: ``[N, 7]`` global boxes.
        max_range: metres; farther hits are dropped.
        t_out: out ``[B, A]`` range per ray (inf: no return). id_out: out ``[B, A]`` int64 box index,
            -1 ground, -2 no return.
    """
    n_b, n_a = dirs.shape[0], dirs.shape[1]
    ox, oy, oz = origin[0], origin[1], origin[2]
    for i in range(n_b):
        for j in range(n_a):
            dz = dirs[i, j, 2]
            t_out[i, j] = -oz / dz if dz < -1e-9 else 1e30
            id_out[i, j] = -1 if dz < -1e-9 else -2
    step = 2.0 * math.pi / n_a
    for b in range(boxes.shape[0]):
        bx, by, bz = boxes[b, 0], boxes[b, 1], boxes[b, 2]
        hl, hw, hh = boxes[b, 3] / 2, boxes[b, 4] / 2, boxes[b, 5] / 2
        c, s = math.cos(boxes[b, 6]), math.sin(boxes[b, 6])
        dist = math.sqrt((bx - ox) ** 2 + (by - oy) ** 2)
        radius = math.sqrt(hl * hl + hw * hw)
        if dist - radius > max_range:
            continue
        if dist <= radius + 0.05:
            j0, j1 = 0, n_a
        else:
            half = math.asin(radius / dist)
            phi = math.atan2(by - oy, bx - ox) - az0
            j0 = int(math.floor((phi - half) / step)) - 1
            j1 = int(math.ceil((phi + half) / step)) + 2
        for jj in range(j0, j1):
            j = jj % n_a
            for i in range(n_b):
                t, axis, sign, lx, ly, lz = _ray_box(ox, oy, oz, dirs[i, j, 0], dirs[i, j, 1], dirs[i, j, 2],
                                                     bx, by, bz, hl, hw, hh, c, s)
                if t > 0.0 and t < t_out[i, j]:
                    t_out[i, j] = t
                    id_out[i, j] = b
    for i in range(n_b):
        for j in range(n_a):
            if t_out[i, j] > max_range:
                t_out[i, j] = 1e30
                id_out[i, j] = -2
