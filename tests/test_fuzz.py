"""Fuzzed parsers: whatever a user feeds them, they return a valid value or raise the project's own error.

Property-based (hypothesis): sidecar annotations, keypoint prompts and files, query images, part names,
times, training configs (dict and YAML), model configs and checkpoint config.json files, ReID keypoint
files. Inputs are random JSON structures, near-valid structures with fields swapped for random JSON,
and valid files with flipped, inserted or cut bytes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from kpr_model.checkpoint_files import CheckpointError, read_checkpoint_info
from kpr_model.config import KPRConfig, KPRConfigError
from kpr_model.keypoints import SIDECAR_FORMAT
from pipelines.errors import UserError
from pipelines.query import parse_parts
from pipelines.times import parse_time
from pipelines.query_image import decode_image
from pipelines.query_prompt import KeypointPrompt, prompt_from_json, read_prompt
from training.augment import AugmentConfig
from training.datasets.common import DatasetError, read_keypoints_file
from training.run_settings import TrainConfigError
from training.train_config import TrainConfig
from workers.annotations import Sidecar, load_sidecar
from workers.errors import AnnotationError
from workers.json_input import finite_number, float_array, read_json

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=30)

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # any Unicode that can be written out
NUMBERS = (st.integers() | st.floats() | st.sampled_from([2**64, 10**400, -10**400, 1e39]))
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Usually (4 times in 5) a valid value, else any JSON value in its place: near-valid inputs reach deep checks."""
    return st.integers(0, 4).flatmap(lambda n: valid if n else JSON)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes replaced, inserted or deleted, and maybe cut short."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if action == "replace" and data:
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        elif data:
            del data[at]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def finite(array: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether ``array`` is a float32 array of ``shape`` with finite values only."""
    return isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == shape and \
        bool(np.all(np.isfinite(array)))


def dump(value: object) -> str:
    """JSON text of a generated value (NaN and Infinity included, as Python's json reads them)."""
    return json.dumps(value)


# --- sidecar annotations (workers/annotations.py) ---------------------------------------------------------

COORD = st.floats(-50, 2000)
SKELETON = st.lists(st.tuples(COORD, COORD, st.sampled_from([0, 1, 2])).map(list), min_size=17, max_size=17)
DETECTION = st.fixed_dictionaries(
    {"bbox": maybe(st.tuples(COORD, COORD, st.floats(1, 300), st.floats(1, 300)).map(list)),
     "keypoints": maybe(SKELETON)},
    optional={"track_id": maybe(st.integers(0, 99) | TEXT), "score": maybe(st.floats(0, 1))})
FRAME = st.fixed_dictionaries({"frame_index": maybe(st.integers(0, 10_000)), "detections": maybe(st.lists(maybe(DETECTION), max_size=3))})
SIDECAR = st.fixed_dictionaries(
    {"format": maybe(st.just(SIDECAR_FORMAT)), "frames": maybe(st.lists(maybe(FRAME), max_size=3))},
    optional={"camera_id": maybe(TEXT), "start_time": maybe(st.floats(0, 2e9)), "fps": maybe(st.floats(1, 60)),
              "tracks": maybe(st.dictionaries(TEXT, maybe(st.fixed_dictionaries({"identity": maybe(TEXT)})), max_size=3))})
VALID_SIDECAR = dump({"format": SIDECAR_FORMAT, "camera_id": "cam1", "start_time": 1.7e9, "fps": 10.0,
                      "tracks": {"3": {"identity": "p7"}},
                      "frames": [{"frame_index": 0, "detections": [
                          {"track_id": 3, "bbox": [10, 20, 30, 60], "keypoints": [[15, 25, 2]] * 17, "score": 0.9}]}]})


def check_sidecar(sidecar: Sidecar) -> None:
    """Every field of a parsed sidecar has the type and range its users rely on."""
    assert sidecar.camera_id is None or isinstance(sidecar.camera_id, str)
    assert sidecar.start_time is None or math.isfinite(sidecar.start_time)
    assert sidecar.fps is None or (math.isfinite(sidecar.fps) and sidecar.fps > 0)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in sidecar.identities.items())
    for index, detections in sidecar.frames.items():
        assert isinstance(index, int) and index >= 0
        for d in detections:
            assert finite(d.bbox, (4,)) and d.bbox[2] > 0 and d.bbox[3] > 0
            assert finite(d.keypoints, (17, 3)) and set(np.unique(d.keypoints[:, 2])) <= {0.0, 1.0}
            assert isinstance(d.score, float) and math.isfinite(d.score)
            assert d.track_id is None or isinstance(d.track_id, str)


def parse_sidecar(path: Path) -> None:
    """load_sidecar either gives a valid Sidecar or raises AnnotationError."""
    try:
        sidecar = load_sidecar(path)
    except AnnotationError:
        return
    check_sidecar(sidecar)


@FUZZ
@given(document=maybe(SIDECAR))
@example(document={"format": SIDECAR_FORMAT, "frames": [{"frame_index": 10**400}]})
@example(document={"format": SIDECAR_FORMAT, "camera_id": ["c1"], "fps": 0})
def test_sidecar_parser_fuzzed_structures(tmp_path, document):
    path = tmp_path / "video.json"
    path.write_text(dump(document))
    parse_sidecar(path)


@FUZZ
@given(data=mutated(VALID_SIDECAR.encode()) | st.binary(max_size=64))
@example(data=b'{"format": "kpr-sidecar-v1", "fps": ' + b"9" * 5000 + b"}")
def test_sidecar_parser_fuzzed_bytes(tmp_path, data):
    path = tmp_path / "video.json"
    path.write_bytes(data)
    parse_sidecar(path)


# --- keypoint prompts (pipelines/query_prompt.py, workers/json_input.py) ----------------------------------

CLICK = st.fixed_dictionaries({"x": maybe(COORD), "y": maybe(COORD)},
                              optional={"joint": maybe(st.integers(-2, 18) | st.sampled_from(["nose", "left_ankle", "tail"]))})
PROMPT = st.one_of(
    JSON,
    maybe(SKELETON),
    st.fixed_dictionaries({}, optional={"positive": maybe(st.lists(maybe(CLICK), max_size=4)),
                                        "negative": maybe(st.lists(maybe(CLICK), max_size=4))}),
    st.fixed_dictionaries({"keypoints": maybe(SKELETON)}, optional={"negative_keypoints": maybe(st.lists(maybe(SKELETON), max_size=2))}),
    st.lists(st.fixed_dictionaries({"keypoints": maybe(SKELETON)}, optional={"is_target": maybe(st.booleans())}), max_size=3),
)


def check_prompt(prompt: KeypointPrompt) -> None:
    """A positive skeleton [17, 3] or None, and negative skeletons [M, 17, 3], all finite."""
    assert prompt.positive is None or finite(prompt.positive, (17, 3))
    assert prompt.negative.ndim == 3 and finite(prompt.negative, (len(prompt.negative), 17, 3))


@FUZZ
@given(obj=PROMPT)
@example(obj={"positive": [{"joint": 0, "x": 10**400, "y": 1}]})
@example(obj={"negative": [{"x": 1, "y": 1e309}]})
def test_prompt_from_json_fuzzed(obj):
    try:
        prompt = prompt_from_json(obj, "prompt")
    except UserError:
        return
    check_prompt(prompt)


@FEW
@given(data=mutated(dump({"keypoints": [[1, 2, 0.9]] * 17, "negative_keypoints": [[[3, 4, 1]] * 17]}).encode())
       | st.binary(max_size=32))
def test_read_prompt_fuzzed_bytes(tmp_path, data):
    path = tmp_path / "prompt.json"
    path.write_bytes(data)
    try:
        prompt = read_prompt(path)
    except UserError:
        return
    check_prompt(prompt)


@FUZZ
@given(value=JSON, shape=st.sampled_from([(4,), (17, 3), (2, 17, 3)]))
@example(value=[10**400, 1, 1, 1], shape=(4,))
def test_json_number_checks_fuzzed(value, shape):
    try:
        array = float_array(value, shape, "value")
    except AnnotationError:
        array = None
    assert array is None or finite(array, shape)
    try:
        number = finite_number(value, "value")
    except AnnotationError:
        return
    assert isinstance(number, float) and math.isfinite(number) and not isinstance(value, bool)


@FEW
@given(data=st.binary(max_size=64) | st.sampled_from([b"[" * 100_000, b"1" * 5000, b"\xff\xfe{}"]))
def test_read_json_fuzzed_bytes(tmp_path, data):
    path = tmp_path / "any.json"
    path.write_bytes(data)
    try:
        read_json(path, "missing")
    except AnnotationError:
        pass


# --- image queries (pipelines/query*.py) -------------------------------------------------------------------


def _encoded(fmt: str, mode: str = "RGB", **options) -> bytes:
    """A small real image file in ``fmt``, with a few colours so every codec has something to encode."""
    pixels = np.zeros((12, 8, 3), np.uint8)
    pixels[:6, :, 0], pixels[:, :4, 1] = 200, 120
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt, **options)
    return out.getvalue()


def _jpeg_with_orientation() -> bytes:
    """A JPEG whose EXIF says "rotate 90": decode_image applies that."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded("JPEG", exif=exif.tobytes())


IMAGE_SEEDS = [_encoded("PNG"), _encoded("PNG", "P"), _encoded("PNG", "I;16"), _jpeg_with_orientation(),
               _encoded("GIF", "P"), _encoded("BMP"), _encoded("TIFF"), _encoded("WEBP"), _encoded("PPM")]


def test_image_seeds_decode():
    shapes = [decode_image(data).shape for data in IMAGE_SEEDS]
    assert shapes[3] == (8, 12, 3)  # EXIF orientation applied
    assert all(shape[2] == 3 for shape in shapes)


@settings(FUZZ, max_examples=150)
@given(data=st.one_of(*(mutated(seed) for seed in IMAGE_SEEDS), st.binary(max_size=64)))
def test_decode_image_fuzzed_bytes(data):
    try:
        pixels = decode_image(data)
    except UserError:
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape) > 0


@FUZZ
@given(obj=PROMPT, width=st.integers(1, 3000), height=st.integers(1, 3000))
def test_prompt_inside_the_crop_fuzzed(obj, width, height):
    try:
        prompt = prompt_from_json(obj, "keypoints")
        prompt.check_inside(width, height)
    except UserError:
        return
    check_prompt(prompt)
    points = np.concatenate([prompt.negative.reshape(-1, 3)] + ([] if prompt.positive is None else [prompt.positive]))
    seen = points[points[:, 2] > 0]
    assert np.all((seen[:, 0] >= 0) & (seen[:, 0] < width) & (seen[:, 1] >= 0) & (seen[:, 1] < height))


@FUZZ
@given(values=st.lists(TEXT | st.integers().map(str) | st.sampled_from(["left_foot", "Left Foot", "²", "٣", "9" * 5000]),
                       max_size=4),
       num_parts=st.integers(1, 12))
def test_parse_parts_fuzzed(values, num_parts):
    try:
        chosen = parse_parts(values, num_parts)
    except UserError:
        return
    assert chosen == sorted(set(chosen)) and all(0 <= i < num_parts for i in chosen)


ISO_TIMES = st.builds(lambda moment, offset: moment.isoformat() + offset, st.datetimes(),
                      st.sampled_from(["", "Z", "+14:00", "-23:59", "+05:30"]))


@FUZZ
@given(text=st.none() | TEXT | ISO_TIMES | NUMBERS.map(str))
@example(text="0001-01-01T00:00:00+14:00")
@example(text="9999-12-31T23:59:59-23:59")
def test_parse_time_fuzzed(text):
    try:
        value = parse_time(text)
    except UserError:
        return
    assert (value is None) == (text is None) and (value is None or math.isfinite(value))


# --- training configs (training/train.py, training/augment.py) ---------------------------------------------

TRAIN_VALUES = {
    "data_root": TEXT, "out": TEXT, "dataset": st.sampled_from(["synthetic", "market1501", "nope"]),
    "preset": st.sampled_from(["tiny", "demo", "huge"]), "epochs": st.integers(-2, 500),
    "max_minutes": st.none() | st.floats(), "identities_per_batch": st.integers(0, 64), "optimizer": st.sampled_from(["adam", "sgd", "rmsprop"]),
    "lr": st.floats(), "warmup_epochs": st.floats(-1, 10), "workers": st.integers(-1, 8), "use_gpu": st.booleans(),
    "augment": st.fixed_dictionaries({}, optional={"flip_p": maybe(st.floats(-1, 2)), "bipo_p": maybe(st.floats(0, 1)),
                                                   "crop_scale": maybe(st.lists(st.floats(0, 1.5), max_size=3)),
                                                   "bipo_overlap": maybe(st.lists(st.floats(0, 1), max_size=3))}),
}
TRAIN_CONFIG = st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in TRAIN_VALUES.items()}) \
    .flatmap(lambda known: st.dictionaries(TEXT, JSON, max_size=2).map(lambda extra: {**extra, **known}))


def check_train_config(cfg: TrainConfig) -> None:
    """A loaded TrainConfig keeps the promises of its __post_init__ (and AugmentConfig's)."""
    assert isinstance(cfg.data_root, str) and isinstance(cfg.out, str)
    assert all(isinstance(getattr(cfg, n), int) and getattr(cfg, n) >= 1 for n in ("epochs", "identities_per_batch"))
    assert cfg.optimizer in ("adam", "sgd") and cfg.lr > 0 and cfg.workers >= 0
    assert cfg.max_minutes is None or cfg.max_minutes > 0
    aug = cfg.augment
    assert isinstance(aug, AugmentConfig) and 0 <= aug.flip_p <= 1 and 0 <= aug.bipo_p <= 1
    assert all(0 < low <= high <= 1 for low, high in (aug.crop_scale, aug.bipo_overlap))


@FUZZ
@given(values=TRAIN_CONFIG | JSON)
def test_train_config_from_dict_fuzzed(values):
    try:
        cfg = TrainConfig.from_dict(values)
    except TrainConfigError:
        return
    check_train_config(cfg)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """A YAML dump of a fuzzed config, maybe with characters inserted or removed, or arbitrary text."""
    text = yaml.safe_dump(draw(TRAIN_CONFIG), allow_unicode=True)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", ":", " ", "\n", "[", "{", "'", "- ", "&a ", "*a", "!!python/none"])) \
            + text[at + draw(st.integers(0, 2)):]
    return text


@FUZZ
@given(text=yaml_texts() | TEXT)
def test_train_config_from_yaml_fuzzed(tmp_path, text):
    path = tmp_path / "train.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = TrainConfig.from_yaml(path)
    except TrainConfigError:
        return
    check_train_config(cfg)


@pytest.mark.parametrize("content", [b"data_root: a\nout: b\nwhen: 2001-02-30\n", b"\xff\xfe data_root: a\n",
                                     b"[" * 1000, b"{1: 2, a: 3}"])
def test_train_config_former_parser_bugs(tmp_path, content):
    path = tmp_path / "train.yaml"
    path.write_bytes(content)
    with pytest.raises(TrainConfigError):
        TrainConfig.from_yaml(path)


# --- model configs and checkpoints (kpr_model/config.py, kpr_model/checkpoint.py) --------------------------

KPR_BASE = KPRConfig.tiny().to_dict()
KPR_VALUES = {
    "backbone": TEXT, "image_size": st.lists(st.integers(-64, 512), max_size=3), "num_parts": st.integers(0, 9),
    "part_grouping": st.sampled_from(["eight", "five_v", "six"]), "prompt_grouping": st.sampled_from(["cck8", "cck6", "x"]),
    "embed_dim": st.integers(-1, 64), "vis_thresh": st.floats(), "norm_std": st.lists(st.floats(-1, 1), max_size=4),
    "fusion_stages": st.lists(st.integers(0, 5), max_size=5), "last_stride": st.integers(0, 3),
    "backbone_args": st.dictionaries(TEXT, JSON, max_size=3),
    "loss": st.fixed_dictionaries({}, optional={"id_global": maybe(st.floats()), "triplet_use_visibility": maybe(st.booleans()),
                                                "margin": st.floats()}),
}
KPR_CONFIG = st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in KPR_VALUES.items()}) \
    .flatmap(lambda changed: st.dictionaries(TEXT, JSON, max_size=1).map(lambda extra: {**KPR_BASE, **changed, **extra}))


def check_kpr_config(config: KPRConfig) -> None:
    """A loaded KPRConfig is well typed and survives a JSON round trip unchanged."""
    assert isinstance(config.backbone, str) and all(isinstance(v, int) and v >= 32 for v in config.image_size)
    assert all(isinstance(getattr(config.loss, f.name), (bool, float, int)) for f in dataclasses.fields(config.loss))
    assert KPRConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@FUZZ
@given(data=KPR_CONFIG | JSON)
@example(data={**KPR_BASE, "image_size": [float("inf"), 32]})
@example(data={**KPR_BASE, "loss": 5})
def test_kpr_config_from_dict_fuzzed(data):
    try:
        config = KPRConfig.from_dict(data)
    except KPRConfigError:
        return
    check_kpr_config(config)


@pytest.fixture(scope="module")
def checkpoint_config(tiny_checkpoint) -> bytes:
    """The config.json of a real tiny checkpoint: the seed that byte fuzzing corrupts."""
    return (tiny_checkpoint / "config.json").read_bytes()


def _read_info(folder: Path, config_json: bytes) -> None:
    """read_checkpoint_info of a checkpoint folder holding ``config_json``: valid info or CheckpointError."""
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "config.json").write_bytes(config_json)
    try:
        config, model_id, metadata = read_checkpoint_info(folder)
    except CheckpointError:
        return
    check_kpr_config(config)
    assert isinstance(model_id, str) and isinstance(metadata, dict)


@FEW
@given(data=st.data())
def test_checkpoint_info_fuzzed_config_bytes(tmp_path, checkpoint_config, data):
    _read_info(tmp_path / "ckpt", data.draw(mutated(checkpoint_config)))


@FUZZ
@given(document=st.fixed_dictionaries({"config": maybe(KPR_CONFIG)},
                                      optional={"model_id": maybe(TEXT), "metadata": maybe(st.dictionaries(TEXT, JSON))}) | JSON)
def test_checkpoint_info_fuzzed_config_documents(tmp_path, document):
    _read_info(tmp_path / "ckpt", dump(document).encode())


# --- ReID keypoint files (training/datasets/common.py) -------------------------------------------------------

KEYPOINT_FILE = st.one_of(
    JSON,
    st.fixed_dictionaries({"keypoints": maybe(SKELETON | st.lists(COORD, min_size=51, max_size=51))}),
    st.lists(st.fixed_dictionaries({"keypoints": maybe(SKELETON)}, optional={"is_target": maybe(st.booleans())}), max_size=3),
)


@FUZZ
@given(content=KEYPOINT_FILE.map(dump) | mutated(dump([{"keypoints": [[1, 2, 0.5]] * 17, "is_target": True}]).encode()))
@example(content=dump({"keypoints": [10**400] * 51}))
@example(content=b"[" * 100_000)
def test_read_keypoints_file_fuzzed(tmp_path, content):
    path = tmp_path / "0001_c1s1_000001_00.jpg_keypoints.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        target, negatives = read_keypoints_file(path)
    except DatasetError:
        return
    assert target is None or finite(target, (17, 3))
    assert finite(negatives, (len(negatives), 17, 3))
