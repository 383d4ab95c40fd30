"""Camera geometry the heads share: the "virtual" camera frame and heading/velocity in camera terms.

An augmented camera has ``ego2img' = K'·ego2cam·B⁻¹`` with ``K' = A·K``. A horizontal image flip
makes ``K'[0, 0] < 0``; the virtual camera absorbs that sign into the camera frame
(``K_v = K'·S``, ``ego2cam_v = K_v⁻¹·ego2img'``, ``S = diag(sign fx, 1, 1)``), so the network always
sees a right-handed camera whose x runs to the image's right. ``ego2cam_v`` may carry the BEV
augmentation's scale/flip in its linear part; directions are mapped with that linear part and its
inverse, so everything stays consistent with the augmented boxes.
"""

from __future__ import annotations

import torch

from shards.conventions import intrinsics_to_4x4


def virtual_cameras(ego2img: torch.Tensor, intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ego2img [..., 4, 4]``, ``intrinsics [..., 3, 3]`` -> (``ego2cam_v [..., 4, 4]``, ``focal [...]``).

    ``focal`` is ``sqrt(|det K[:2, :2]|)`` (pixels), invariant to image flips and rotations.
    """
    sign = torch.where(intrinsics[..., 0, 0] < 0, -1.0, 1.0).to(intrinsics.dtype)
    k_v = intrinsics.clone()
    k_v[..., :, 0] = k_v[..., :, 0] * sign[..., None]
    ego2cam_v = torch.linalg.inv(intrinsics_to_4x4(k_v)) @ ego2img
    focal = torch.linalg.det(intrinsics[..., :2, :2]).abs().sqrt()
    return ego2cam_v, focal


def ego_xy_to_cam_xz(linear: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Ego-frame horizontal vectors -> their camera-frame (x, z) components.

    Args:
        linear: ``[..., 3, 3]`` linear part of ego2cam.
        xy: ``[..., 2]`` vectors ``(vx, vy, 0)`` in the ego frame.
    Returns:
        ``[..., 2]`` camera (x, z).
    """
    v = torch.cat([xy, torch.zeros_like(xy[..., :1])], -1)
    cam = (linear @ v[..., None])[..., 0]
    return torch.stack([cam[..., 0], cam[..., 2]], -1)


def cam_xz_to_ego_xy(linear: torch.Tensor, xz: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`ego_xy_to_cam_xz`: camera (x, z) of a horizontal ego vector -> ego (x, y).

    The camera y component is solved so that the ego-frame vector has no z component.
    Args:
        linear: ``[..., 3, 3]`` linear part of ego2cam.
        xz: ``[..., 2]``.
    Returns:
        ``[..., 2]`` ego (x, y).
    """
    inv = torch.linalg.inv(linear)
    r = inv[..., 2, :]  # ego z = r . (x, y, z)_cam
    denom = torch.where(r[..., 1].abs() < 1e-6, torch.full_like(r[..., 1], 1e-6), r[..., 1])
    y = -(r[..., 0] * xz[..., 0] + r[..., 2] * xz[..., 1]) / denom
    cam = torch.stack([xz[..., 0], y, xz[..., 1]], -1)
    return (inv @ cam[..., None])[..., 0][..., :2]


def allocentric_from_yaw(linear: torch.Tensor, centre_cam: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Ego yaw -> allocentric angle ``alpha = theta - atan2(c_x, c_z)`` with ``theta`` the camera-frame heading.

    Args:
        linear: ``[..., 3, 3]`` ego2cam linear part; centre_cam ``[..., 3]``; yaw ``[...]``.
    Returns:
        ``[...]`` alpha (radians, unwrapped).
    """
    h = ego_xy_to_cam_xz(linear, torch.stack([yaw.cos(), yaw.sin()], -1))
    theta = torch.atan2(h[..., 0], h[..., 1])
    return theta - torch.atan2(centre_cam[..., 0], centre_cam[..., 2])


def yaw_from_allocentric(linear: torch.Tensor, centre_cam: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`allocentric_from_yaw` -> ego yaw ``[...]`` in (-pi, pi]."""
    theta = alpha + torch.atan2(centre_cam[..., 0], centre_cam[..., 2])
    h = cam_xz_to_ego_xy(linear, torch.stack([theta.sin(), theta.cos()], -1))
    return torch.atan2(h[..., 1], h[..., 0])
