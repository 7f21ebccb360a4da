"""Articulated walking bodies on the COCO-17 skeleton, drawn with OpenCV primitives into label sprites.

A body is a set of 3-D points in body units (height = 1; x to the person's left, y up, z
forward) posed by a walk cycle (legs and arms swing, knees and elbows bend, the pelvis bobs as the
feet stay on the ground). It is turned to its walking heading, projected orthographically at
the size the camera gives it, and drawn far-to-near into a small two-channel sprite holding the
fine ``Part`` label and the ``Material`` colour slot of every pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from training.synthetic.appearance import Appearance, BodyShape, Material
from training.synthetic.skeleton import HEAD_KEYPOINT_INDICES, NUM_KEYPOINTS, TORSO_JOINT_INDICES, Part

# Points 0..16 are the COCO-17 keypoints; the others only shape the drawn body.
HEAD_CENTRE, NECK, L_TOE, L_HEEL, R_TOE, R_HEEL, L_HAND, R_HAND = range(17, 25)
TORSO_CORNERS = tuple(range(25, 33))
PELVIS_CORNERS = tuple(range(33, 41))
BAG_CORNERS = tuple(range(41, 49))
STRAP_END = 49
HAIR_CORNERS = tuple(range(50, 56))
NUM_POINTS = 56

_SHIFT = 2
_SCALE = 1 << _SHIFT
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 28, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False))], axis=1)


@dataclass(frozen=True)
class BodySprite:
    """A drawn body: label sprite placed at ``origin`` in the frame, keypoints and visibility hints."""

    origin: tuple[int, int]
    part: np.ndarray
    material: np.ndarray
    keypoints: np.ndarray
    keypoint_can_show: np.ndarray
    torso_near: np.ndarray
    body_pixels: int


def _box_corners(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float]) -> np.ndarray:
    return np.array([[a, b, c] for a in x for b in y for c in z], float)


def walk_pose(shape: BodyShape, appearance: Appearance, phase: float, amplitude: float) -> np.ndarray:
    """3-D points [NUM_POINTS, 3] of a body at walk ``phase`` (radians); ``amplitude`` 0 stands still."""
    p = np.zeros((NUM_POINTS, 3))
    hr, sh, hh, td = shape.head_radius, shape.shoulder_half, shape.hip_half, shape.torso_depth
    thigh, shin, ankle_h = 0.245 * shape.leg_scale, 0.235 * shape.leg_scale, 0.04
    hip_y = ankle_h + thigh + shin
    shoulder_y = 1.0 - 2.2 * hr - 0.045
    sin_p, cos_p = math.sin(phase), math.cos(phase)
    for sign, (hip, knee, ankle, toe, heel) in ((1.0, (11, 13, 15, L_TOE, L_HEEL)), (-1.0, (12, 14, 16, R_TOE, R_HEEL))):
        swing = sign * 0.42 * amplitude * sin_p
        shin_angle = swing - (0.06 + 0.6 * amplitude * max(0.0, sign * cos_p))
        p[hip] = (sign * hh, hip_y, 0.0)
        p[knee] = p[hip] + thigh * np.array([0.0, -math.cos(swing), math.sin(swing)])
        p[ankle] = p[knee] + shin * np.array([0.0, -math.cos(shin_angle), math.sin(shin_angle)])
        p[toe] = p[ankle] + (0.0, -0.03, 0.11)
        p[heel] = p[ankle] + (0.0, -0.032, -0.035)
    for sign, (shoulder, elbow, wrist, hand) in ((1.0, (5, 7, 9, L_HAND)), (-1.0, (6, 8, 10, R_HAND))):
        swing = -sign * 0.38 * amplitude * sin_p
        fore = swing + 0.18 + 0.45 * amplitude * max(0.0, -sign * sin_p)
        p[shoulder] = (sign * sh, shoulder_y, 0.0)
        p[elbow] = p[shoulder] + (sign * 0.012, -0.165 * math.cos(swing), 0.165 * math.sin(swing))
        direction = np.array([0.0, -math.cos(fore), math.sin(fore)])
        p[wrist] = p[elbow] + 0.14 * direction
        p[hand] = p[wrist] + 0.035 * direction
    centre = np.array([0.0, 1.0 - 1.1 * hr, 0.01])
    rx, rz = 0.85 * hr, hr
    p[HEAD_CENTRE] = centre
    p[NECK] = (0.0, shoulder_y - 0.01, 0.0)
    p[0] = centre + (0.0, -0.15 * hr, 0.8 * rz)
    p[1], p[2] = centre + (0.38 * rx, 0.18 * hr, 0.7 * rz), centre + (-0.38 * rx, 0.18 * hr, 0.7 * rz)
    p[3], p[4] = centre + (0.78 * rx, 0.0, -0.05 * rz), centre + (-0.78 * rx, 0.0, -0.05 * rz)
    waist = hip_y + 0.03
    p[TORSO_CORNERS, :] = np.concatenate([
        _box_corners((-sh, sh), (shoulder_y + 0.005,), (-td, td)),
        _box_corners((-hh - 0.012, hh + 0.012), (waist,), (-0.9 * td, 0.9 * td))])
    p[PELVIS_CORNERS, :] = _box_corners((-hh - 0.03, hh + 0.03), (hip_y - 0.055, hip_y + 0.04), (-0.9 * td, 0.9 * td))
    if appearance.bag == "backpack":
        p[BAG_CORNERS, :] = _box_corners((-0.075, 0.075), (shoulder_y - 0.2, shoulder_y - 0.02), (-td - 0.075, -td - 0.005))
    else:
        p[BAG_CORNERS, :] = _box_corners((-hh - 0.075, -hh - 0.025), (hip_y - 0.04, hip_y + 0.07), (-0.05, 0.05))
    p[STRAP_END] = (-hh - 0.05, hip_y + 0.07, 0.0)
    hair_y, hair_bottom = centre[1], shoulder_y - 0.035
    p[HAIR_CORNERS, :] = [(0.8 * rx, hair_y, -0.35 * rz), (-0.8 * rx, hair_y, -0.35 * rz), (0.0, hair_y, -0.6 * rz),
                          (0.85 * rx, hair_bottom, -0.5 * rz), (-0.85 * rx, hair_bottom, -0.5 * rz),
                          (0.0, hair_bottom, -0.7 * rz)]
    p[:, 1] -= min(p[15, 1], p[16, 1]) - ankle_h
    return p


class _Painter:
    """Draws primitives into a two-channel (part, material) sprite in sub-pixel coordinates."""

    def __init__(self, canvas: np.ndarray, points: np.ndarray, height_px: float, girth: float) -> None:
        self.canvas = canvas
        self.points = points
        self.fixed = np.round(points * _SCALE).astype(np.int32)
        self.height_px = height_px
        self.girth = girth

    def limb(self, a: int, b: int, width: float, part: Part, material: Material) -> None:
        """Round-capped segment between points ``a`` and ``b``; ``width`` in body units."""
        thickness = max(1, int(round(width * self.girth * self.height_px)))
        cv2.line(self.canvas, tuple(self.fixed[a]), tuple(self.fixed[b]), (int(part), int(material)), thickness,
                 cv2.LINE_8, _SHIFT)

    def hull(self, indices: tuple[int, ...], part: Part, material: Material) -> None:
        """Filled convex hull of the projected points ``indices`` (a box seen from any side)."""
        hull = cv2.convexHull(self.fixed[list(indices)])
        cv2.fillConvexPoly(self.canvas, hull, (int(part), int(material)), cv2.LINE_8, _SHIFT)

    def polygon(self, points: np.ndarray, part: Part, material: Material) -> None:
        """Filled convex polygon given in sprite pixels."""
        fixed = np.round(points * _SCALE).astype(np.int32)
        cv2.fillConvexPoly(self.canvas, fixed, (int(part), int(material)), cv2.LINE_8, _SHIFT)

    def disc(self, a: int, radius: float, part: Part, material: Material) -> None:
        """Filled disc centred on point ``a``; ``radius`` in body units."""
        r = max(1, int(round(radius * self.girth * self.height_px * _SCALE)))
        cv2.circle(self.canvas, tuple(self.fixed[a]), r, (int(part), int(material)), -1, cv2.LINE_8, _SHIFT)


def _paint_leg(pt: _Painter, appearance: Appearance, side: str, joints: tuple[int, int, int, int, int]) -> None:
    hip, knee, ankle, toe, heel = joints
    trousers = Material.TROUSERS_A
    shin = Material.SKIN if appearance.trouser_pattern == "shorts" else trousers
    pt.limb(hip, knee, 0.08, Part[f"{side}_THIGH"], trousers)
    pt.limb(knee, ankle, 0.062, Part[f"{side}_SHIN"], shin)
    if appearance.trouser_pattern == "striped":
        pt.limb(hip, knee, 0.022, Part[f"{side}_THIGH"], Material.TROUSERS_B)
        pt.limb(knee, ankle, 0.02, Part[f"{side}_SHIN"], Material.TROUSERS_B)
    pt.limb(heel, toe, 0.05, Part[f"{side}_FOOT"], Material.SHOES)


def _paint_arm(pt: _Painter, appearance: Appearance, side: str, joints: tuple[int, int, int, int]) -> None:
    shoulder, elbow, wrist, hand = joints
    pt.limb(shoulder, elbow, 0.05, Part[f"{side}_UPPER_ARM"], Material.SLEEVE)
    pt.limb(elbow, wrist, 0.042, Part[f"{side}_FOREARM"], Material.SLEEVE if appearance.long_sleeves else Material.SKIN)
    pt.disc(hand, 0.024, Part[f"{side}_HAND"], Material.SKIN)


def _paint_torso(pt: _Painter, appearance: Appearance) -> None:
    pt.hull(PELVIS_CORNERS, Part.TORSO, Material.TROUSERS_A)
    pt.hull(TORSO_CORNERS, Part.TORSO, Material.TORSO_A)
    if appearance.torso_pattern != "plain":
        ys = pt.points[list(TORSO_CORNERS), 1]
        top, bottom = ys.min(), ys.max()
        rows = np.arange(pt.canvas.shape[0], dtype=float)[:, None]
        if appearance.torso_pattern == "stripes":
            period = max(2.0, 0.045 * pt.height_px)
            second = (np.floor((rows - top) / period) % 2) == 1
        else:
            second = rows >= (top + bottom) / 2
        material = pt.canvas[..., 1]
        material[(material == Material.TORSO_A) & second] = Material.TORSO_B
    if appearance.bag == "shoulder_bag":
        pt.limb(5, STRAP_END, 0.012, Part.TORSO, Material.BAG)


def _arc(centre: np.ndarray, radii: np.ndarray, toward: np.ndarray, threshold: float) -> np.ndarray | None:
    """Points of an ellipse whose direction from the centre is within ``threshold`` (cosine) of ``toward``."""
    keep = _CIRCLE @ toward > threshold
    if not keep.any():
        return None
    if not keep.all():
        start = int(np.argmax(~keep & np.roll(keep, -1))) + 1
        keep = np.roll(keep, -start)
        ring = np.roll(_CIRCLE, -start, axis=0)[keep]
    else:
        ring = _CIRCLE
    return centre + ring * radii


def _paint_head(pt: _Painter, appearance: Appearance, head_radius: float, heading: float, hair_behind: bool) -> None:
    r = head_radius * pt.height_px
    radii = np.array([r * math.hypot(0.85 * math.sin(heading), math.cos(heading)), 1.1 * r])
    centre = pt.points[HEAD_CENTRE]
    long_hair = appearance.hair_style == "long"
    pt.limb(NECK, HEAD_CENTRE, 0.05, Part.HEAD, Material.SKIN)
    if long_hair and hair_behind:
        pt.hull(HAIR_CORNERS, Part.HEAD, Material.HAIR)
    pt.polygon(centre + _CIRCLE * radii, Part.HEAD, Material.SKIN)
    back_up = np.array([-0.9 * math.cos(heading), -1.0])
    coverage = -0.35 - 0.7 * math.sin(heading) - (0.1 if long_hair else 0.0)
    hair = _arc(centre, radii, back_up / np.linalg.norm(back_up), coverage)
    if hair is not None:
        pt.polygon(hair, Part.HEAD, Material.HAIR)
    if appearance.hat is not None:
        pt.polygon(_arc(centre, radii, np.array([0.0, -1.0]), 0.4), Part.HEAD, Material.HAT)
    if long_hair and not hair_behind:
        pt.hull(HAIR_CORNERS, Part.HEAD, Material.HAIR)


def draw_body(shape: BodyShape, appearance: Appearance, phase: float, amplitude: float, heading: float,
              foot: tuple[float, float], height_px: float) -> BodySprite:
    """Pose, turn (``heading``: 0 walks right, +pi/2 away from the camera) and draw a body standing at ``foot``."""
    body = walk_pose(shape, appearance, phase, amplitude)
    lateral = body[:, 0] * -math.sin(heading) + body[:, 2] * math.cos(heading)
    depth = body[:, 0] * math.cos(heading) + body[:, 2] * math.sin(heading)
    image = np.stack([foot[0] + height_px * lateral, foot[1] - height_px * body[:, 1]], axis=1)
    pad = 0.06 * height_px * shape.girth + 3
    x0, y0 = np.floor(image.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(image.max(axis=0) + pad).astype(int)
    canvas = np.zeros((y1 - y0, x1 - x0, 2), np.uint8)
    painter = _Painter(canvas, image - (x0, y0), height_px, shape.girth)
    head_depth = depth[HEAD_CENTRE]
    layers: list[tuple[float, int, Callable[[], None]]] = [
        (0.0, 0, lambda: _paint_torso(painter, appearance)),
        (-1e-3, 1, lambda: _paint_head(painter, appearance, shape.head_radius, heading,
                                        depth[HAIR_CORNERS[2]] > head_depth)),
        (float(depth[[11, 13, 15]].mean()), 2, lambda: _paint_leg(painter, appearance, "L", (11, 13, 15, L_TOE, L_HEEL))),
        (float(depth[[12, 14, 16]].mean()), 2, lambda: _paint_leg(painter, appearance, "R", (12, 14, 16, R_TOE, R_HEEL))),
        (float(depth[[5, 7, 9]].mean()), 3, lambda: _paint_arm(painter, appearance, "L", (5, 7, 9, L_HAND))),
        (float(depth[[6, 8, 10]].mean()), 3, lambda: _paint_arm(painter, appearance, "R", (6, 8, 10, R_HAND))),
    ]
    if appearance.bag is not None:
        layers.append((float(depth[list(BAG_CORNERS)].mean()) - 5e-4, 1,
                       lambda: painter.hull(BAG_CORNERS, Part.TORSO, Material.BAG)))
    for _, _, paint in sorted(layers, key=lambda layer: (-layer[0], layer[1])):
        paint()
    can_show = np.ones(NUM_KEYPOINTS, bool)
    head = list(HEAD_KEYPOINT_INDICES)
    can_show[head] = depth[head] - head_depth < 0.2 * shape.head_radius
    torso_near = np.zeros(NUM_KEYPOINTS, bool)
    torso_near[list(TORSO_JOINT_INDICES)] = depth[list(TORSO_JOINT_INDICES)] <= 0.01
    part = np.ascontiguousarray(canvas[..., 0])
    return BodySprite((int(x0), int(y0)), part, np.ascontiguousarray(canvas[..., 1]), image[:NUM_KEYPOINTS].copy(),
                      can_show, torso_near, int(np.count_nonzero(part)))
