"""Content-addressed artifact store: layout, idempotence, corruption detection, hashing."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from app.ml.artifacts import (
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    dataset_hash,
    parse_uri,
)
from app.ml.data.synthetic import generate_ohlcv


@pytest.fixture()
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_put_get_layout_and_uri(store):
    data = b"model bytes \x00\x01"
    sha = hashlib.sha256(data).hexdigest()
    ref = store.put_bytes(data, fmt="xgboost-ubj", suffix=".ubj")
    assert ref == ArtifactRef(uri=f"cas://{sha}.ubj", sha256=sha, format="xgboost-ubj",
                              size=len(data))
    assert (store.root / sha[:2] / f"{sha}.ubj").read_bytes() == data
    assert store.get_bytes(ref.uri, ref.sha256) == data
    assert parse_uri(ref.uri) == (sha, ".ubj")
    assert ArtifactRef.from_dict(ref.to_dict()) == ref


def test_put_is_idempotent_and_leaves_no_temp_files(store):
    a = store.put_bytes(b"same", fmt="raw", suffix=".bin")
    b = store.put_bytes(b"same", fmt="raw", suffix=".bin")
    assert a == b
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{a.sha256}.bin"]


def test_flipped_byte_is_detected_and_a_new_put_repairs_it(store):
    ref = store.put_bytes(b"x" * 1000, fmt="raw", suffix=".bin")
    path = store.path_for(ref.uri)
    raw = bytearray(path.read_bytes())
    raw[500] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        store.get_bytes(ref.uri, ref.sha256)
    store.put_bytes(b"x" * 1000, fmt="raw", suffix=".bin")
    assert store.get_bytes(ref.uri) == b"x" * 1000


def test_truncated_file_and_wrong_expected_hash_are_refused(store):
    ref = store.put_bytes(b"abcdef", fmt="raw")
    store.path_for(ref.uri).write_bytes(b"abc")
    with pytest.raises(ArtifactCorrupt):
        store.get_bytes(ref.uri)
    other = store.put_bytes(b"other", fmt="raw")
    with pytest.raises(ArtifactCorrupt, match="does not match"):
        store.get_bytes(other.uri, sha256=ref.sha256)


def test_missing_artifact_and_bad_uri(store):
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("cas://" + "0" * 64 + ".ubj")
    with pytest.raises(ValueError, match="not an artifact URI"):
        store.get_bytes("file:///etc/passwd")
    with pytest.raises(ValueError, match="not an artifact URI"):
        store.get_bytes("cas://../../" + "0" * 64)
    with pytest.raises(ValueError, match="suffix"):
        store.put_bytes(b"x", fmt="raw", suffix="/../evil")


def test_store_from_settings_uses_the_artifact_root(tmp_path):
    from app.core.config import load_settings

    settings = load_settings({"CLM_ARTIFACT_ROOT": str(tmp_path / "shared")})
    ref = ArtifactStore.from_settings(settings).put_bytes(b"m", fmt="raw", suffix=".bin")
    assert (tmp_path / "shared" / ref.sha256[:2] / f"{ref.sha256}.bin").exists()


def test_same_uri_resolves_under_another_mount_of_the_root(store, tmp_path):
    ref = store.put_bytes(b"shared", fmt="raw", suffix=".bin")
    shutil.copytree(store.root, tmp_path / "elsewhere")
    assert ArtifactStore(tmp_path / "elsewhere").get_bytes(ref.uri, ref.sha256) == b"shared"


def test_frames_round_trip_with_deterministic_bytes(store):
    f = generate_ohlcv("planted", 300, seed=2)
    f.attrs["meta"] = {"fold": 1}
    a = store.put_frame(f)
    b = store.put_frame(f.copy())
    assert a.uri == b.uri and a.format == "parquet" and a.uri.endswith(".parquet")
    back = store.get_frame(a.uri, a.sha256)
    pd.testing.assert_frame_equal(back, f, check_exact=True, check_freq=False)
    assert back.attrs["meta"] == {"fold": 1}
    path = store.path_for(a.uri)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactCorrupt):
        store.get_frame(a.uri, a.sha256)


def test_json_is_canonical(store):
    a = store.put_json({"b": 1, "a": [1, 2]})
    b = store.put_json({"a": [1, 2], "b": 1})
    assert a.uri == b.uri and a.uri.endswith(".json")
    assert store.get_json(a.uri) == {"a": [1, 2], "b": 1}
    with pytest.raises(ValueError):
        store.put_json({"x": float("nan")})


def test_dataset_hash_depends_on_content_not_storage():
    f = generate_ohlcv("random_walk", 200, seed=1)
    h = dataset_hash(f)
    assert len(h) == 64
    as_ns = f.copy()
    as_ns.index = as_ns.index.as_unit("ns")
    assert dataset_hash(as_ns) == h
    other_tz = f.copy()
    other_tz.index = other_tz.index.tz_convert("America/New_York")
    assert dataset_hash(other_tz) == h  # same instants
    changed = f.copy()
    changed.iloc[100, 3] = np.nextafter(changed.iloc[100, 3], np.inf)
    assert dataset_hash(changed) != h
    assert dataset_hash(f.iloc[:-1]) != h
    assert dataset_hash(f[["close", "open", "high", "low", "volume"]]) != h
