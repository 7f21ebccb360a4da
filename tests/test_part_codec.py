"""Compact embeddings: the int8 part codec, the packed parts record, and stores of schema versions 1 (float32) and 2
(int8 codes and scales as a struct) still read, searched and written."""
from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from kpr_model.embeddings import ReIDEmbeddings
from storage import PersonSearch, Store, detections_table, embeddings_of
from storage.part_codec import decode_parts, encode_parts, pack_parts, unpack_parts
from storage.schema import (
    DETECTIONS, EMBEDDING_COLUMNS, SCHEMA_VERSION, VERSION_KEY, VIDEOS, detections_schema, encoded_like, videos_schema,
)
from support import detections_of, random_embeddings, video_row

DIM, PARTS = 32, 6


def test_int8_parts_are_within_half_a_step_of_the_floats() -> None:
    parts = random_embeddings(np.random.default_rng(0), 50, PARTS, DIM).parts
    parts[0, 1] = 0.0  # an all-zero part vector stays zero
    codes, scales = encode_parts(parts)
    assert codes.dtype == np.int8 and codes.shape == parts.shape and scales.shape == (50, PARTS)
    assert np.abs(codes).max(axis=-1)[scales > 0].min() == 127
    back = decode_parts(codes, scales)
    assert back.dtype == np.float32 and not back[0, 1].any()
    assert (np.abs(back - parts) <= scales[..., None] / 2 + 1e-7).all()


def test_a_packed_record_holds_the_codes_scales_and_visibility_of_a_row() -> None:
    embeddings = random_embeddings(np.random.default_rng(5), 7, PARTS, DIM, random_visibility=True)
    packed = pack_parts(embeddings.parts, embeddings.visibility)
    assert packed.dtype == np.uint8 and packed.shape == (7, PARTS * (DIM + 8))
    parts, visibility = unpack_parts(packed, DIM)
    np.testing.assert_array_equal(parts, decode_parts(*encode_parts(embeddings.parts)))
    np.testing.assert_array_equal(visibility, embeddings.visibility)
    try:
        unpack_parts(packed, DIM + 1)
    except ValueError as exc:
        assert "does not hold parts of dim 33" in str(exc)
    else:
        raise AssertionError("a record of another dim was unpacked")


def test_a_store_writes_parts_as_int8_and_reads_them_back_as_floats(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    video = video_row("v1")
    embeddings = random_embeddings(np.random.default_rng(1), 8, PARTS, DIM, random_visibility=True)
    store.write_video(video, detections_of(video, embeddings))
    table = lancedb.connect(tmp_path / "db").open_table(DETECTIONS)
    assert table.schema.field("parts").type == pa.binary(PARTS * (DIM + 8))  # codes, scales and visibility: one column
    assert store.embedding_columns == ("vector", "parts")
    assert table.schema.field("vector").type.value_type == pa.float32()
    assert table.schema.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()
    stored = embeddings_of(store.query_detections("frame_index >= 0").sort_by("frame_index"))
    assert stored.parts.dtype == stored.global_emb.dtype == np.float32
    np.testing.assert_allclose(stored.parts, embeddings.parts, rtol=0, atol=1 / 254 + 1e-7)
    np.testing.assert_array_equal(stored.global_emb, embeddings.global_emb)
    np.testing.assert_array_equal(stored.visibility, embeddings.visibility)
    rows = store.query_detections("frame_index >= 0").sort_by("frame_index")
    np.testing.assert_array_equal(np.stack(rows["visibility"].to_numpy(zero_copy_only=False)), embeddings.visibility)
    as_dicts = embeddings_of(rows.drop_columns(["visibility"]).to_pylist())  # e.g. one row by id, as a dict
    np.testing.assert_array_equal(as_dicts.parts, stored.parts)
    np.testing.assert_array_equal(as_dicts.visibility, stored.visibility)


def test_rows_are_re_encoded_for_a_table_of_the_other_version() -> None:
    embeddings = random_embeddings(np.random.default_rng(4), 5, PARTS, DIM, random_visibility=True)
    compact = detections_of(video_row("v1"), embeddings)
    assert encoded_like(compact, compact.schema) is compact
    float32 = encoded_like(compact, detections_schema(DIM, PARTS, version=1))
    assert float32.schema.field("parts").type == pa.list_(pa.float32(), PARTS * DIM)
    assert float32.column_names == compact.column_names and float32["thumbnail"].equals(compact["thumbnail"])
    np.testing.assert_array_equal(embeddings_of(float32).parts, embeddings_of(compact).parts)
    again = encoded_like(float32, compact.schema)
    assert again.schema.field("parts").type == compact.schema.field("parts").type
    np.testing.assert_allclose(embeddings_of(again).parts, embeddings_of(compact).parts, rtol=0, atol=1e-6)
    exact = detections_table(compact.drop_columns(list(EMBEDDING_COLUMNS)).to_pylist(), embeddings, version=1)
    np.testing.assert_array_equal(embeddings_of(exact).parts, embeddings.parts)


def _float32_columns(table: pa.Table, embeddings: ReIDEmbeddings) -> pa.Table:
    """Detection rows as schema version 1 wrote them: float32 vector [D], parts [K*D] and visibility [K]."""
    n = len(embeddings)
    columns = {"vector": embeddings.global_emb, "parts": embeddings.parts.reshape(n, -1), "visibility": embeddings.visibility}
    for name, values in columns.items():
        field = pa.field(name, pa.list_(pa.float32(), values.shape[1]), nullable=False)
        array = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).ravel()), values.shape[1])
        table = table.set_column(table.schema.get_field_index(name), field, array)
    return table.replace_schema_metadata({**table.schema.metadata, VERSION_KEY: b"1"})


def _old_store(path: Path, video: dict, embeddings: ReIDEmbeddings, version: int) -> None:
    """A store as ``version`` left it: one done video of detections, float32 (1) or int8 codes and scales (2)."""
    db = lancedb.connect(path)
    videos = db.create_table(VIDEOS, schema=videos_schema().with_metadata({VERSION_KEY: str(version).encode()}))
    videos.add(pa.Table.from_pylist([{**video, "status": "done", "n_detections": len(embeddings)}], schema=videos.schema))
    rows = detections_of(video, embeddings)
    db.create_table(DETECTIONS, _float32_columns(rows, embeddings) if version == 1 else detections_table(
        rows.drop_columns(list(EMBEDDING_COLUMNS)).to_pylist(), embeddings, version=version))


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_store_is_read_and_searched(tmp_path: Path, version: int) -> None:
    old = random_embeddings(np.random.default_rng(2), 6, PARTS, DIM)
    _old_store(tmp_path / "db", video_row("old"), old, version)
    store = Store.open(tmp_path / "db", create=False)
    assert store.count_detections() == 6 and store.embedding_shape == (DIM, PARTS)
    assert store.embedding_columns == EMBEDDING_COLUMNS
    tolerance = 0 if version == 1 else 1 / 254 + 1e-7
    np.testing.assert_allclose(embeddings_of(store.query_detections("frame_index = 4")).parts, old.parts[4:5], rtol=0,
                               atol=tolerance)
    hit = PersonSearch(store).search(old.select([2]), k=1)[0]
    assert hit.frame_index == 2 and hit.distance < (1e-3 if version == 1 else 1e-2)  # int8 codes: within their step


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_store_takes_new_videos_in_its_own_encoding(tmp_path: Path, version: int) -> None:
    rng = np.random.default_rng(3)
    _old_store(tmp_path / "db", video_row("old", "cam-1"), random_embeddings(rng, 6, PARTS, DIM), version)
    store = Store.open(tmp_path / "db", create=False)
    new_video, new = video_row("new", "cam-2"), random_embeddings(rng, 5, PARTS, DIM)
    assert store.write_video(new_video, detections_of(new_video, new)) == 5
    table = lancedb.connect(tmp_path / "db").open_table(DETECTIONS)
    assert table.schema.field("parts").type == detections_schema(DIM, PARTS, version=version).field("parts").type
    assert table.schema.metadata[VERSION_KEY] == str(version).encode()
    # the batch was built compact, so its parts carry the int8 codes' values
    stored = embeddings_of(store.query_detections("video_id = 'new'").sort_by("frame_index"))
    np.testing.assert_allclose(stored.parts, new.parts, rtol=0, atol=1 / 254 + 1e-7)
    hit = PersonSearch(store).search(new.select([3]), k=1)[0]
    assert (hit.video_id, hit.frame_index) == ("new", 3)
    assert Store.open(tmp_path / "db", create=False).count_detections() == 11
