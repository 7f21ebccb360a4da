"""Synthetic multi-camera world: walking people on the COCO-17 skeleton seen by several cameras.

Deterministic from ``WorldConfig.seed``. ``generate_archive`` writes one MP4 per camera with a
``kpr-sidecar-v1`` annotation file (boxes, keypoints with visibility, identities, tracks);
``export_reid_crops`` writes Market-1501-style crops with keypoint prompts and part masks.
"""
from training.synthetic.appearance import Appearance, BodyShape, Identity, make_identities, shared_colours
from training.synthetic.archive import generate_archive, video_stem
from training.synthetic.config import WorldConfig
from training.synthetic.crops import CropExport, export_reid_crops
from training.synthetic.render import CameraRenderer, PersonInFrame, RenderedFrame, render_frame
from training.synthetic.scene import Camera, CameraGeometry, CameraLook, Occluder
from training.synthetic.schedule import Visit, WalkPath
from training.synthetic.skeleton import EIGHT_PARTS, Part
from training.synthetic.world import World, build_world

__all__ = [
    "Appearance", "BodyShape", "Camera", "CameraGeometry", "CameraLook", "CameraRenderer", "CropExport", "EIGHT_PARTS",
    "Identity", "Occluder", "Part", "PersonInFrame", "RenderedFrame", "Visit", "WalkPath", "World",
    "WorldConfig", "build_world", "export_reid_crops", "generate_archive", "make_identities", "render_frame",
    "shared_colours", "video_stem",
]
