"""Second cameras derived from a real video: another viewpoint-like geometry and another sensor's look, written with cv2.

A derived camera sees the same people at the same moments as its source but, like a second camera
of the same scene, through another geometry (a perspective warp of a source quadrilateral, optionally
mirrored, at a lower resolution) and another sensor (gamma, colour cast, contrast, blur, noise, JPEG
recompression). Its video starts ``frame_offset`` source frames late, so a sampled frame of the
derived camera is never the very frame sampled from the source. A camera may also see the scene
behind a static occluder (a counter in front of it), which hides the lower body of everyone behind it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class CameraStyle:
    """How a derived camera differs from its source.

    ``quad``: the source region it sees, four (x, y) corners as fractions of the source size
    (top-left, top-right, bottom-right, bottom-left), warped onto the whole output of ``size``
    (width, height) pixels; ``mirror`` flips it left-right. Photometry, in this order: ``gamma``
    (out = in ** gamma on 0..1: > 1 darkens), ``gains`` (R, G, B multipliers: a colour cast),
    ``contrast`` around mid-grey, ``brightness`` (multiplier), Gaussian ``blur`` (sigma, pixels),
    Gaussian ``noise`` (sigma, 0..255 levels), JPEG recompression at ``jpeg_quality``. ``occluder``: a
    box (x0, y0, x1, y1, fractions of the output) painted in ``occluder_rgb`` over the warped view, before
    the photometry, so that the sensor's look covers it too.
    """

    quad: tuple[tuple[float, float], ...]
    size: tuple[int, int]
    mirror: bool = False
    gamma: float = 1.0
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    brightness: float = 1.0
    blur: float = 0.0
    noise: float = 0.0
    jpeg_quality: int = 95
    frame_offset: int = 1
    occluder: tuple[float, float, float, float] | None = None
    occluder_rgb: tuple[int, int, int] = (96, 76, 60)


# A second viewpoint: the middle of the room seen turned and mirrored, 3/4 of the resolution, warm and
# soft, as from a cheaper camera on the other side.
DERIVED = CameraStyle(quad=((0.22, 0.0), (0.97, 0.06), (0.92, 1.0), (0.16, 0.95)), size=(432, 324), mirror=True,
                      gamma=0.85, gains=(1.12, 1.0, 0.82), contrast=0.9, blur=1.2, noise=4.0, jpeg_quality=35)
# Night: a dark, low-contrast, blue-grey, noisy view from a slightly different angle.
DARK = CameraStyle(quad=((0.1, 0.04), (0.86, 0.0), (0.9, 0.97), (0.06, 1.0)), size=(512, 288), gamma=2.2,
                   gains=(0.8, 0.9, 1.15), contrast=0.6, brightness=0.55, blur=0.8, noise=7.0, jpeg_quality=40)
# Half hidden: a slightly different angle through a counter that hides everyone below the waist.
OCCLUDED = CameraStyle(quad=((0.14, 0.02), (0.9, 0.0), (0.88, 1.0), (0.12, 0.98)), size=(576, 324),
                       gains=(1.0, 1.0, 0.94), blur=0.6, noise=3.0, jpeg_quality=60, frame_offset=2,
                       occluder=(0.0, 0.55, 1.0, 1.0))


def warp_matrix(style: CameraStyle, width: int, height: int) -> np.ndarray:
    """The 3x3 perspective matrix from source pixels of a ``width`` x ``height`` frame to the derived camera's pixels."""
    source = np.float32([[x * width, y * height] for x, y in style.quad])
    out_w, out_h = style.size
    target = np.float32([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]])
    if style.mirror:
        target = target[[1, 0, 3, 2]]
    return cv2.getPerspectiveTransform(source, target)


def restyle(image: np.ndarray, style: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """The photometric part of ``style`` applied to an HxWx3 uint8 image (any channel order given as RGB)."""
    pixels = (image.astype(np.float32) / 255.0) ** style.gamma
    pixels = pixels * np.float32(style.gains)
    pixels = (0.5 + (pixels - 0.5) * style.contrast) * style.brightness
    pixels = pixels * 255.0
    if style.blur > 0:
        pixels = cv2.GaussianBlur(pixels, (0, 0), style.blur)
    if style.noise > 0:
        pixels = pixels + rng.normal(0.0, style.noise, pixels.shape).astype(np.float32)
    out = np.clip(pixels, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, style.jpeg_quality])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else out


def derive_frame(frame: np.ndarray, style: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """One source frame (HxWx3 uint8, RGB) as the derived camera sees it."""
    height, width = frame.shape[:2]
    warped = cv2.warpPerspective(frame, warp_matrix(style, width, height), style.size, flags=cv2.INTER_AREA,
                                 borderMode=cv2.BORDER_REPLICATE)
    if style.occluder is not None:
        out_w, out_h = style.size
        x0, y0, x1, y1 = style.occluder
        warped[round(y0 * out_h):round(y1 * out_h), round(x0 * out_w):round(x1 * out_w)] = style.occluder_rgb
    return restyle(warped, style, rng)


def derive_crop(crop: np.ndarray, style: CameraStyle, source_width: int, rng: np.random.Generator) -> np.ndarray:
    """A person crop of a ``source_width`` pixels wide frame as the derived camera would cut it: mirrored like it,
    at its scale (the width of its quadrilateral's top edge), with its photometry."""
    scale = style.size[0] / ((style.quad[1][0] - style.quad[0][0]) * source_width)
    height, width = crop.shape[:2]
    small = cv2.resize(crop, (max(8, round(width * scale)), max(16, round(height * scale))), interpolation=cv2.INTER_AREA)
    return restyle(small[:, ::-1] if style.mirror else small, style, rng)


def write_derived_video(source: Path, target: Path, style: CameraStyle, seed: int = 0) -> int:
    """Write ``source`` as the derived camera of ``style`` sees it (mp4v, same fps); the number of frames written.

    The first ``style.frame_offset`` source frames are left out. Written to a temporary name, then
    renamed, so an interrupted run never leaves a truncated video that looks finished.
    """
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise RuntimeError(f"cannot read video {source}")
    fps = capture.get(cv2.CAP_PROP_FPS)
    partial = target.with_name(target.stem + ".partial" + target.suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, style.size)
    rng = np.random.default_rng(seed)
    written = index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index >= style.frame_offset:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                writer.write(cv2.cvtColor(derive_frame(rgb, style, rng), cv2.COLOR_RGB2BGR))
                written += 1
            index += 1
    finally:
        capture.release()
        writer.release()
    partial.rename(target)
    return written
