"""Identities of the synthetic world: clothing colours and patterns, hair, accessories, body build.

Some identities deliberately share their whole torso garment and others their trousers, so a
model has to look at the other parts (shoes, hair, bag, trousers / torso) to tell them apart.
Colours are BGR tuples, named so that world.json can say who shares what.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from typing import Any

import numpy as np

from training.synthetic.skeleton import KEYPOINT_PARTS, TORSO_JOINT_INDICES, Part

Colour = tuple[int, int, int]

CLOTHING_COLOURS: dict[str, Colour] = {
    "red": (45, 40, 200), "maroon": (50, 30, 120), "orange": (30, 125, 235), "yellow": (50, 205, 230),
    "olive": (45, 125, 120), "green": (70, 165, 60), "forest": (45, 95, 35), "teal": (135, 135, 30),
    "sky": (225, 180, 120), "blue": (200, 95, 40), "navy": (100, 40, 20), "purple": (135, 50, 110),
    "pink": (185, 140, 235), "magenta": (150, 45, 200), "white": (235, 235, 235), "black": (35, 35, 38),
    "grey": (135, 135, 135), "charcoal": (75, 72, 70), "beige": (160, 195, 215), "brown": (40, 70, 115),
    "denim": (150, 105, 65), "khaki": (105, 160, 180),
}
TROUSER_COLOURS: tuple[str, ...] = ("denim", "black", "navy", "khaki", "grey", "charcoal", "beige", "brown", "olive",
                                    "forest", "maroon", "white", "sky", "red")
SHOE_COLOURS: tuple[str, ...] = ("white", "black", "brown", "red", "blue", "grey", "orange", "green", "yellow", "navy",
                                 "pink", "teal")
SKIN_TONES: dict[str, Colour] = {"light": (175, 195, 235), "fair": (150, 180, 225), "tan": (110, 150, 200),
                                 "brown": (70, 105, 160), "dark": (45, 70, 110)}
HAIR_COLOURS: dict[str, Colour] = {"black": (25, 25, 30), "dark_brown": (30, 45, 70), "brown": (45, 75, 115),
                                   "blond": (110, 185, 220), "grey": (175, 175, 175), "auburn": (40, 70, 170)}


class Material(IntEnum):
    """Colour slot of a drawn pixel; each identity maps slots to its own colours."""

    NONE = 0
    SKIN = 1
    HAIR = 2
    HAT = 3
    TORSO_A = 4
    TORSO_B = 5
    SLEEVE = 6
    TROUSERS_A = 7
    TROUSERS_B = 8
    SHOES = 9
    BAG = 10


@dataclass(frozen=True)
class BodyShape:
    """Build of one person; lengths are fractions of the person's height except ``height_m``."""

    height_m: float
    shoulder_half: float
    hip_half: float
    torso_depth: float
    head_radius: float
    leg_scale: float
    girth: float

    @property
    def stride_m(self) -> float:
        """Ground distance of one full walk cycle (two steps)."""
        return 0.8 * self.height_m


@dataclass(frozen=True)
class Appearance:
    """What a person wears and looks like, as colour names and pattern choices."""

    skin: str
    hair: str
    hair_style: str
    hat: str | None
    torso: str
    torso_pattern: str
    torso_secondary: str | None
    long_sleeves: bool
    trousers: str
    trouser_pattern: str
    trouser_secondary: str | None
    shoes: str
    bag: str | None
    bag_colour: str | None

    def palette(self) -> np.ndarray:
        """BGR colour of every ``Material`` slot, as a [len(Material), 3] uint8 lookup table."""
        table = np.zeros((len(Material), 3), np.uint8)
        table[Material.SKIN] = SKIN_TONES[self.skin]
        table[Material.HAIR] = HAIR_COLOURS[self.hair]
        table[Material.TORSO_A] = CLOTHING_COLOURS[self.torso]
        table[Material.SLEEVE] = CLOTHING_COLOURS[self.torso]
        table[Material.TROUSERS_A] = CLOTHING_COLOURS[self.trousers]
        table[Material.SHOES] = CLOTHING_COLOURS[self.shoes]
        for slot, name in ((Material.HAT, self.hat), (Material.TORSO_B, self.torso_secondary),
                           (Material.TROUSERS_B, self.trouser_secondary), (Material.BAG, self.bag_colour)):
            if name is not None:
                table[slot] = CLOTHING_COLOURS[name]
        return table

    def part_materials(self) -> dict[Part, tuple[Material, ...]]:
        """Colour slots each body part is drawn with (what its pixels can show)."""
        torso = [Material.TORSO_A, Material.TROUSERS_A]
        if self.torso_pattern != "plain":
            torso.append(Material.TORSO_B)
        if self.bag is not None:
            torso.append(Material.BAG)
        legs = (Material.TROUSERS_A, Material.TROUSERS_B) if self.trouser_pattern == "striped" else (Material.TROUSERS_A,)
        shins = (Material.SKIN,) if self.trouser_pattern == "shorts" else legs
        forearm = (Material.SLEEVE,) if self.long_sleeves else (Material.SKIN,)
        head = (Material.SKIN, Material.HAIR) + ((Material.HAT,) if self.hat else ())
        table = {Part.HEAD: head, Part.TORSO: tuple(torso)}
        for side in ("L", "R"):
            table[Part[f"{side}_UPPER_ARM"]] = (Material.SLEEVE,)
            table[Part[f"{side}_FOREARM"]] = forearm
            table[Part[f"{side}_HAND"]] = (Material.SKIN,)
            table[Part[f"{side}_THIGH"]] = legs
            table[Part[f"{side}_SHIN"]] = shins
            table[Part[f"{side}_FOOT"]] = (Material.SHOES,)
        return table

    def keypoint_colours(self, keypoint: int) -> np.ndarray:
        """BGR colours [n, 3] the pixel of a visible COCO keypoint can show (before the camera's tone)."""
        parts = KEYPOINT_PARTS[keypoint] + ((Part.TORSO,) if keypoint in TORSO_JOINT_INDICES else ())
        materials = self.part_materials()
        slots = sorted({m for p in parts for m in materials[p]})
        return self.palette()[slots]


@dataclass(frozen=True)
class Identity:
    """One person of the world: name (``id0007``), Market-style pid (7), appearance and build."""

    name: str
    pid: int
    appearance: Appearance
    shape: BodyShape

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description for world.json."""
        return {"id": self.name, "pid": self.pid, "appearance": asdict(self.appearance), "shape": asdict(self.shape)}


def _colour_distance(a: Colour, b: Colour) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def _pick(rng: np.random.Generator, names: tuple[str, ...] | list[str], exclude: str | None = None) -> str:
    choices = [n for n in names if n != exclude]
    return str(choices[rng.integers(len(choices))])


def _torso_garment(rng: np.random.Generator, colour: str) -> dict[str, Any]:
    pattern = str(rng.choice(["plain", "plain", "stripes", "two_tone"]))
    secondary = None if pattern == "plain" else _pick(rng, list(CLOTHING_COLOURS), exclude=colour)
    return {"torso": colour, "torso_pattern": pattern, "torso_secondary": secondary,
            "long_sleeves": bool(rng.random() < 0.6)}


def _trouser_garment(rng: np.random.Generator) -> dict[str, Any]:
    colour = _pick(rng, TROUSER_COLOURS)
    pattern = str(rng.choice(["plain", "plain", "plain", "striped", "shorts"]))
    secondary = _pick(rng, list(CLOTHING_COLOURS), exclude=colour) if pattern == "striped" else None
    return {"trousers": colour, "trouser_pattern": pattern, "trouser_secondary": secondary}


def _accessories(rng: np.random.Generator) -> dict[str, Any]:
    skin = _pick(rng, list(SKIN_TONES))
    hair = _pick(rng, [h for h in HAIR_COLOURS if _colour_distance(HAIR_COLOURS[h], SKIN_TONES[skin]) > 60])
    bag = [None, None, "backpack", "shoulder_bag"][rng.integers(4)]
    return {"skin": skin, "hair": hair, "hair_style": str(rng.choice(["short", "short", "long"])),
            "hat": _pick(rng, list(CLOTHING_COLOURS)) if rng.random() < 0.2 else None,
            "shoes": _pick(rng, SHOE_COLOURS), "bag": bag,
            "bag_colour": _pick(rng, list(CLOTHING_COLOURS)) if bag else None}


def _body_shape(rng: np.random.Generator) -> BodyShape:
    return BodyShape(height_m=round(float(rng.uniform(1.55, 1.92)), 3),
                     shoulder_half=round(float(rng.uniform(0.095, 0.125)), 4),
                     hip_half=round(float(rng.uniform(0.068, 0.085)), 4),
                     torso_depth=round(float(rng.uniform(0.055, 0.075)), 4),
                     head_radius=round(float(rng.uniform(0.058, 0.068)), 4),
                     leg_scale=round(float(rng.uniform(0.96, 1.04)), 4),
                     girth=round(float(rng.uniform(0.85, 1.2)), 3))


def _pairs(rng: np.random.Generator, n: int, count: int, avoid: set[frozenset[int]]) -> list[tuple[int, int]]:
    order = [int(i) for i in rng.permutation(n)]
    pairs: list[tuple[int, int]] = []
    for a, b in zip(order[0::2], order[1::2]):
        if len(pairs) == count:
            break
        if frozenset((a, b)) not in avoid:
            pairs.append((a, b))
    return pairs


def make_identities(n: int, rng: np.random.Generator) -> list[Identity]:
    """``n`` distinct identities; about one in five pairs up on an identical torso, another on identical trousers."""
    torso_order = rng.permutation(len(CLOTHING_COLOURS))
    torso_names = list(CLOTHING_COLOURS)
    torsos = [_torso_garment(rng, torso_names[torso_order[i % len(torso_names)]]) for i in range(n)]
    trousers = [_trouser_garment(rng) for _ in range(n)]
    n_pairs = max(1, n // 5) if n >= 2 else 0
    torso_pairs = _pairs(rng, n, n_pairs, set())
    for a, b in torso_pairs:
        torsos[b] = torsos[a]
    for a, b in _pairs(rng, n, n_pairs, {frozenset(p) for p in torso_pairs}):
        trousers[b] = trousers[a]
    identities: list[Identity] = []
    seen: set[Appearance] = set()
    for i in range(n):
        appearance = Appearance(**torsos[i], **trousers[i], **_accessories(rng))
        while appearance in seen:
            appearance = replace(appearance, shoes=_pick(rng, SHOE_COLOURS, exclude=appearance.shoes))
        seen.add(appearance)
        identities.append(Identity(f"id{i + 1:04d}", i + 1, appearance, _body_shape(rng)))
    return identities


def shared_colours(identities: list[Identity] | tuple[Identity, ...]) -> dict[str, dict[str, list[str]]]:
    """Which identities share a torso colour and which share a trouser colour: {part: {colour: [ids]}}."""
    result: dict[str, dict[str, list[str]]] = {}
    for part in ("torso", "trousers"):
        groups: dict[str, list[str]] = defaultdict(list)
        for identity in identities:
            groups[getattr(identity.appearance, part)].append(identity.name)
        result[part] = {colour: names for colour, names in sorted(groups.items()) if len(names) > 1}
    return result
