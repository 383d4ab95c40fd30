"""shards.conventions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shards import conventions as cv

FWD_CAM = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""Camera -> ego rotation of a camera looking along ego +x (cam x = -ego y, cam y = -ego z, cam z = ego x)."""


def _pose(yaw: float, t) -> np.ndarray:
    m = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = t
    return m


def _cam2ego() -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = FWD_CAM
    m[:3, 3] = [1.0, 0.0, 1.5]
    return m


K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])


def test_constants():
    assert cv.CAMERAS[0] == "CAM_FRONT" and cv.CAMERAS[3] == "CAM_BACK" and len(cv.CAMERAS) == 6
    assert cv.CLASSES[0] == "car" and cv.CLASSES[-1] == "barrier" and len(cv.CLASSES) == 10


@pytest.mark.parametrize("name, label", [("vehicle.car", 0), ("human.pedestrian.child", 5),
                                         ("movable_object.trafficcone", 8), ("vehicle.bus.bendy", 2),
                                         ("vehicle.emergency.police", -1), ("static_object.bicycle_rack", -1)])
def test_category_to_class(name, label):
    assert cv.category_to_class(name) == label


def test_attribute_index():
    assert cv.attribute_index("") == -1
    assert cv.ATTRIBUTES[cv.attribute_index("vehicle.parked")] == "vehicle.parked"


def test_quaternion_yaw_90():
    q = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]
    np.testing.assert_allclose(cv.quaternion_to_matrix(q), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(cv.matrix_to_quaternion(cv.quaternion_to_matrix(q)), q, atol=1e-12)
    neg = cv.matrix_to_quaternion(cv.quaternion_to_matrix([-0.6, 0.0, 0.0, 0.8]))
    np.testing.assert_allclose(neg, [0.6, 0.0, 0.0, -0.8], atol=1e-12)  # w >= 0


def test_ego2cam_compensates_ego_motion_between_keyframe_and_exposure():
    # keyframe ego at global x=9; by the camera's exposure the ego moved to x=10
    e2c = cv.ego2cam(_cam2ego(), _pose(0.0, [10.0, 0, 0]), _pose(0.0, [9.0, 0, 0]))
    # keyframe-ego point (5, 0, 1.5) = global (14, 0, 1.5) = exposure-ego (4, 0, 1.5) = 3 m ahead of the camera
    np.testing.assert_allclose(e2c @ [5.0, 0, 1.5, 1], [0, 0, 3, 1], atol=1e-12)
    np.testing.assert_allclose(e2c @ [5.0, 1, 1.5, 1], [-1, 0, 3, 1], atol=1e-12)  # 1 m left -> negative x
    uv, depth = cv.project_points(np.array([[5.0, 0, 1.5], [5.0, 1, 1.5], [5.0, 0, 0.5]]), cv.ego2img(K, e2c))
    np.testing.assert_allclose(uv, [[50, 40], [50 - 100 / 3, 40], [50, 40 + 100 / 3]], atol=1e-9)
    np.testing.assert_allclose(depth, [3, 3, 3])


def test_ego2cam_with_rotated_poses():
    # ego heading global +y (yaw 90 deg); it moves 1 m along +y between keyframe and exposure
    e2c = cv.ego2cam(_cam2ego(), _pose(math.pi / 2, [0, 1.0, 0]), _pose(math.pi / 2, [0, 0, 0]))
    np.testing.assert_allclose(e2c @ [5.0, 0, 1.5, 1], [0, 0, 3, 1], atol=1e-12)
    t = cv.ego2cam(torch.tensor(_cam2ego()), torch.tensor(_pose(math.pi / 2, [0, 1.0, 0])),
                   torch.tensor(_pose(math.pi / 2, [0, 0, 0])))
    np.testing.assert_allclose(t.numpy(), e2c, atol=1e-12)


def test_ego2img_pads_intrinsics():
    k4 = cv.intrinsics_to_4x4(K)
    assert k4.shape == (4, 4) and k4[3, 3] == 1 and np.all(k4[:3, :3] == K) and np.all(k4[:3, 3] == 0)
    kt = cv.intrinsics_to_4x4(torch.tensor(K)[None].repeat(2, 1, 1))
    assert kt.shape == (2, 4, 4) and torch.all(kt[:, 3, 3] == 1)


def test_cur_from_prev():
    m = cv.cur_from_prev(_pose(0.0, [5.0, 0, 0]), _pose(0.0, [0.0, 0, 0]))
    np.testing.assert_allclose(m @ [10.0, 0, 0, 1], [5, 0, 0, 1])
    m = cv.cur_from_prev(_pose(math.pi / 2, [0, 0, 0]), _pose(0.0, [0, 0, 0]))
    np.testing.assert_allclose(m @ [1.0, 0, 0, 1], [0, -1, 0, 1], atol=1e-12)  # prev forward = cur right


def test_box_from_nuscenes_global_to_ego():
    e2g = _pose(math.pi / 2, [100.0, 200.0, 0.0])  # ego faces global +y
    q_y90 = [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]  # box faces global +y
    q_y180 = [0.0, 0, 0, 1.0]  # box faces global -x = ego +y
    boxes = cv.boxes_from_nuscenes(
        translation=[[100.0, 210.0, 1.0], [97.0, 200.0, 0.5]], size_wlh=[[2.0, 4.5, 1.6], [0.6, 0.7, 1.8]],
        rotation_wxyz=[q_y90, q_y180], velocity_xy=[[0.0, 5.0], [np.nan, np.nan]], ego2global_key=e2g)
    np.testing.assert_allclose(boxes[0], [10, 0, 1, 4.5, 2.0, 1.6, 0, 5, 0], atol=1e-9)
    np.testing.assert_allclose(boxes[1, :7], [0, 3, 0.5, 0.7, 0.6, 1.8, math.pi / 2], atol=1e-9)
    assert np.isnan(boxes[1, 7:]).all()
    back = cv.boxes_to_nuscenes(np.nan_to_num(boxes), e2g)
    np.testing.assert_allclose(back["translation"], [[100, 210, 1], [97, 200, 0.5]], atol=1e-9)
    np.testing.assert_allclose(back["size"], [[2.0, 4.5, 1.6], [0.6, 0.7, 1.8]])
    np.testing.assert_allclose(back["rotation"], [q_y90, q_y180], atol=1e-9)
    np.testing.assert_allclose(back["velocity"], [[0, 5], [0, 0]], atol=1e-9)


def test_wrap_angle():
    assert cv.wrap_angle(3 * math.pi / 2) == pytest.approx(-math.pi / 2)
    assert cv.wrap_angle(-math.pi) == pytest.approx(math.pi)
    assert cv.wrap_angle(math.pi) == pytest.approx(math.pi)
    np.testing.assert_allclose(cv.wrap_angle(np.array([0.1, 2 * math.pi + 0.1, -7.0])), [0.1, 0.1, -7 + 2 * math.pi])
    t = cv.wrap_angle(torch.tensor([-math.pi, 4.0], dtype=torch.float64))
    np.testing.assert_allclose(t.numpy(), [math.pi, 4.0 - 2 * math.pi])


def test_box_yaw_wraps_when_ego_turns():
    e2g = _pose(-3.0, [0, 0, 0])
    q = cv.matrix_to_quaternion(_pose(3.0, [0, 0, 0])[:3, :3])
    yaw = cv.boxes_from_nuscenes([[1.0, 0, 0]], [[1, 1, 1]], [q], [[0, 0]], e2g)[0, 6]
    assert yaw == pytest.approx(6.0 - 2 * math.pi)


def test_box_corners():
    c = cv.box_corners(np.array([[0.0, 0, 0, 4, 2, 2, 0]]))[0]
    np.testing.assert_allclose(c[0], [2, 1, -1])  # front-left bottom
    np.testing.assert_allclose(c[6], [-2, -1, 1])  # back-right top
    c = cv.box_corners(np.array([[1.0, 1, 1, 4, 2, 2, math.pi / 2]]))[0]
    np.testing.assert_allclose(c[0], [0, 3, 0], atol=1e-12)


BOX = np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3, 1.0, 1.0]])


def test_transform_boxes_flip_y():
    out = cv.transform_boxes(BOX, np.diag([1.0, -1.0, 1.0, 1.0]))
    np.testing.assert_allclose(out[0], [1, -2, 0.5, 4, 2, 1.5, -0.3, 1, -1], atol=1e-12)


def test_transform_boxes_flip_x():
    out = cv.transform_boxes(BOX, np.diag([-1.0, 1.0, 1.0, 1.0]))
    np.testing.assert_allclose(out[0], [-1, 2, 0.5, 4, 2, 1.5, math.pi - 0.3, -1, 1], atol=1e-12)


def test_transform_boxes_rotation_and_scale():
    m = np.eye(4)
    m[:3, :3] = 1.05 * np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    out = cv.transform_boxes(BOX, m)
    s = 1.05
    np.testing.assert_allclose(out[0], [-2 * s, 1 * s, 0.5 * s, 4 * s, 2 * s, 1.5 * s, 0.3 + math.pi / 2, -s, s],
                               atol=1e-12)
    t = cv.transform_boxes(torch.tensor(BOX), torch.tensor(m))
    np.testing.assert_allclose(t.numpy(), out, atol=1e-12)


def test_bev_transform_keeps_projection_consistent():
    """Augmented boxes projected with ego2img @ inv(B) land on the same pixels as before."""
    e2i = cv.ego2img(K, cv.ego2cam(_cam2ego(), _pose(0.0, [0, 0, 0]), _pose(0.0, [0, 0, 0])))
    b = np.eye(4)
    b[:3, :3] = 0.97 * np.array([[math.cos(0.2), -math.sin(0.2), 0], [math.sin(0.2), math.cos(0.2), 0], [0, 0, 1]])
    b = np.diag([1.0, -1.0, 1.0, 1.0]) @ b
    boxes = np.array([[8.0, 1.0, 1.0, 4, 2, 1.5, 0.4, 0, 0], [12.0, -2.0, 0.8, 1, 1, 1, -1.0, 0, 0]])
    uv0, _ = cv.project_points(cv.box_corners(boxes), e2i)  # [2, 8, 2]
    uv1, _ = cv.project_points(cv.box_corners(cv.transform_boxes(boxes, b)), e2i @ np.linalg.inv(b))
    for a, c in zip(uv0, uv1):  # a mirror permutes the corners: compare them as sets
        np.testing.assert_allclose(c[np.lexsort(c.T)], a[np.lexsort(a.T)], atol=1e-9)
