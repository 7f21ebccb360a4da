"""Frame rendering with exact ground truth: who owns each pixel, and each person's keypoints and visibility.

Walkers and static occluders are composited far-to-near; each person is drawn once into its own
label sprite (body.py) and pasted onto its bounding-box region with vectorised masks, which also
fills a per-pixel owner map and part map. Visibility is read off those maps: a keypoint is
visible (COCO v = 2) when the final render shows, at its pixel, this person and a part the
keypoint lies on; otherwise it is occluded (v = 1), or v = 0 outside the frame. The camera's
illumination, blur and noise are applied last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.synthetic.appearance import Identity
from training.synthetic.body import BodySprite, draw_body
from training.synthetic.scene import draw_occluder, render_background
from training.synthetic.skeleton import KEYPOINT_PARTS, NUM_KEYPOINTS, Part
from training.synthetic.world import World

_NOISE_POOL = 8
_MOSTLY_INSIDE = 0.85
_NOISE_STREAM = 100



def _allowed_parts() -> np.ndarray:
    """[keypoint, part] table: True where a keypoint's pixel may show that part and still be visible."""
    table = np.zeros((NUM_KEYPOINTS, len(Part)), bool)
    for k, parts in enumerate(KEYPOINT_PARTS):
        table[k, list(parts)] = True
    return table


_ALLOWED_PARTS = _allowed_parts()


@dataclass(frozen=True)
class PersonInFrame:
    """Ground truth of one person present in a frame (some of the body inside the image)."""

    visit: int
    identity: Identity
    slot: int
    keypoints: np.ndarray
    bbox: tuple[int, int, int, int]
    visible_fraction: float
    target: bool


@dataclass(frozen=True)
class RenderedFrame:
    """A rendered BGR frame, its pixel owner map (0 = nobody, else a person's ``slot``), part map and people."""

    image: np.ndarray
    owner: np.ndarray
    part: np.ndarray
    persons: tuple[PersonInFrame, ...]


def _paste_region(origin: tuple[int, int], shape: tuple[int, int], size: tuple[int, int]
                  ) -> tuple[slice, slice, slice, slice] | None:
    """Frame and sprite slices where a sprite at ``origin`` overlaps a frame of ``size`` (w, h)."""
    x0, y0 = origin
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + shape[1], size[0]), min(y0 + shape[0], size[1])
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    return slice(fy0, fy1), slice(fx0, fx1), slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)


class CameraRenderer:
    """Renders any frame of one camera; caches the background, occluder sprites, tone table and noise."""

    def __init__(self, world: World, camera: int) -> None:
        self.world = world
        self.camera = world.cameras[camera]
        g = self.camera.geometry
        self.size = (g.width, g.height)
        self.background = render_background(self.camera)
        self.occluders = [(o.depth_m, draw_occluder(g, o)) for o in self.camera.occluders]
        self.lut = self.camera.look.lut()
        self.palettes = [identity.appearance.palette() for identity in world.identities]
        rng = np.random.default_rng([world.config.seed, _NOISE_STREAM + camera])
        noise = np.round(rng.normal(0.0, self.camera.look.noise_sigma, (_NOISE_POOL, g.height, g.width, 3)))
        self.noise_up = np.clip(noise, 0, 255).astype(np.uint8)
        self.noise_down = np.clip(-noise, 0, 255).astype(np.uint8)

    def occluder_layers(self) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Each occluder alone: (image row of its base on the ground, BGR before the camera's tone, mask).

        An occluder hides a person only if its base row is below the person's feet (it stands nearer).
        """
        layers = []
        g = self.camera.geometry
        for occluder, (_, (origin, pixels, cover)) in zip(self.camera.occluders, self.occluders):
            image = np.zeros((self.size[1], self.size[0], 3), np.uint8)
            mask = np.zeros((self.size[1], self.size[0]), bool)
            region = _paste_region(origin, cover.shape, self.size)
            if region is not None:
                fy, fx, sy, sx = region
                np.copyto(image[fy, fx], pixels[sy, sx], where=cover[sy, sx, None])
                mask[fy, fx] = cover[sy, sx]
            layers.append((g.ground_to_image(occluder.x_m, occluder.depth_m)[1], image, mask))
        return layers

    def _sprite(self, visit_index: int, t: float) -> tuple[float, BodySprite]:
        visit = self.world.visits[visit_index]
        identity = self.world.identities[visit.identity]
        local = t - visit.t_start
        x, depth = visit.path.position(local)
        g = self.camera.geometry
        phase = visit.phase0 + 2 * math.pi * visit.path.walked(local) / identity.shape.stride_m
        sprite = draw_body(identity.shape, identity.appearance, phase, visit.path.amplitude(local),
                           visit.path.heading, g.ground_to_image(x, depth),
                           g.pixels_per_metre(depth) * identity.shape.height_m)
        return depth, sprite

    def render(self, frame_index: int) -> RenderedFrame:
        """Frame ``frame_index`` (time = index / fps) with its ground truth."""
        t = frame_index / self.world.config.fps
        visits = self.world.visits_at(self.camera.index, t)
        sprites = [self._sprite(v, t) for v in visits]
        image = self.background.copy()
        owner = np.zeros(image.shape[:2], np.int16)
        part = np.zeros(image.shape[:2], np.uint8)
        layers = [(depth, 1, i) for i, (depth, _) in enumerate(sprites)]
        layers += [(depth, 0, i) for i, (depth, _) in enumerate(self.occluders)]
        for _, is_person, i in sorted(layers, reverse=True):
            if is_person:
                palette = self.palettes[self.world.visits[visits[i]].identity]
                self._paste_person(image, owner, part, sprites[i][1], i + 1, palette)
            else:
                self._paste_occluder(image, owner, part, self.occluders[i][1])
        persons = []
        for slot, (visit, (_, sprite)) in enumerate(zip(visits, sprites), start=1):
            person = self._annotate(visit, slot, sprite, owner, part)
            if person is not None:
                persons.append(person)
        return RenderedFrame(self._finish(image, frame_index), owner, part, tuple(persons))

    def _paste_person(self, image: np.ndarray, owner: np.ndarray, part: np.ndarray, sprite: BodySprite, slot: int,
                      palette: np.ndarray) -> None:
        region = _paste_region(sprite.origin, sprite.part.shape, self.size)
        if region is None:
            return
        fy, fx, sy, sx = region
        labels = sprite.part[sy, sx]
        mask = labels > 0
        np.copyto(image[fy, fx], palette[sprite.material[sy, sx]], where=mask[..., None])
        np.copyto(owner[fy, fx], np.int16(slot), where=mask)
        np.copyto(part[fy, fx], labels, where=mask)

    def _paste_occluder(self, image: np.ndarray, owner: np.ndarray, part: np.ndarray,
                        occluder: tuple[tuple[int, int], np.ndarray, np.ndarray]) -> None:
        origin, pixels, cover = occluder
        region = _paste_region(origin, cover.shape, self.size)
        if region is None:
            return
        fy, fx, sy, sx = region
        mask = cover[sy, sx]
        np.copyto(image[fy, fx], pixels[sy, sx], where=mask[..., None])
        owner[fy, fx][mask] = 0
        part[fy, fx][mask] = 0

    def _annotate(self, visit: int, slot: int, sprite: BodySprite, owner: np.ndarray, part: np.ndarray
                  ) -> PersonInFrame | None:
        rows = np.flatnonzero(sprite.part.any(axis=1))
        cols = np.flatnonzero(sprite.part.any(axis=0))
        if rows.size == 0:
            return None
        x0, y0 = sprite.origin[0] + int(cols[0]), sprite.origin[1] + int(rows[0])
        x1, y1 = sprite.origin[0] + int(cols[-1]) + 1, sprite.origin[1] + int(rows[-1]) + 1
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, self.size[0]), min(y1, self.size[1])
        if cx0 >= cx1 or cy0 >= cy1:
            return None
        visible = int(np.count_nonzero(owner[cy0:cy1, cx0:cx1] == slot))
        fraction = visible / sprite.body_pixels
        inside = (cx1 - cx0) * (cy1 - cy0) / ((x1 - x0) * (y1 - y0))
        config = self.world.config
        target = fraction >= config.min_target_visibility and inside >= _MOSTLY_INSIDE and cy1 - cy0 >= config.min_target_height
        xy = np.round(sprite.keypoints, 2)
        keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        keypoints[:, :2] = xy
        px, py = np.rint(xy).astype(int).T
        inside_frame = (px >= 0) & (px < self.size[0]) & (py >= 0) & (py < self.size[1])
        keypoints[inside_frame, 2] = 1
        k = np.flatnonzero(inside_frame)
        here = part[py[k], px[k]]
        on_part = _ALLOWED_PARTS[k, here] | (sprite.torso_near[k] & (here == Part.TORSO))
        shown = (owner[py[k], px[k]] == slot) & on_part & sprite.keypoint_can_show[k]
        keypoints[k[shown], 2] = 2
        return PersonInFrame(visit, self.world.identities[self.world.visits[visit].identity], slot, keypoints,
                             (cx0, cy0, cx1 - cx0, cy1 - cy0), fraction, bool(target))

    def _finish(self, image: np.ndarray, frame_index: int) -> np.ndarray:
        image = cv2.LUT(image, self.lut)
        if self.camera.look.blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), self.camera.look.blur_sigma)
        k = (frame_index * 5 + self.camera.index) % _NOISE_POOL
        cv2.add(image, self.noise_up[k], dst=image)
        cv2.subtract(image, self.noise_down[k], dst=image)
        return image


def render_frame(world: World, camera: int, frame_index: int) -> RenderedFrame:
    """One frame of one camera (builds a renderer; use ``CameraRenderer`` to render many)."""
    return CameraRenderer(world, camera).render(frame_index)
