"""Content-addressed artifact store: bytes named by their sha256, verified on every load.

Owns `ArtifactStore`, `ArtifactRef`, `ArtifactCorrupt`, `ArtifactNotFound` and
`dataset_hash`. An artifact lives at `<root>/<sha[:2]>/<sha><suffix>` and is addressed
by the URI `cas://<sha><suffix>`: the URI carries no host or path, so it resolves on
every machine that reaches the artifact root (CLM_ARTIFACT_ROOT: a shared folder or an
`s3://bucket/prefix`, through app.core.objectstore). Writes are atomic and idempotent
(same bytes → same object); every read re-hashes, whichever backend holds the bytes.
No pickle: models are stored in their library's format, frames as parquet, documents
as JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.core.config import Settings, StorageRoot
from app.core.objectstore import ObjectNotFound, open_object_store

__all__ = [
    "ArtifactCorrupt",
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStore",
    "dataset_hash",
    "parse_uri",
    "sha256_bytes",
]

URI_SCHEME = "cas://"
_URI_RE = re.compile(r"^cas://(?P<sha>[0-9a-f]{64})(?P<suffix>(\.[A-Za-z0-9_-]+)*)$")
_SUFFIX_RE = re.compile(r"^(\.[A-Za-z0-9_-]+)*$")


class ArtifactError(Exception):
    """Base class for artifact store errors."""


class ArtifactCorrupt(ArtifactError):
    """Stored bytes do not hash to the expected sha256 (or the expectation is inconsistent)."""


class ArtifactNotFound(ArtifactError, LookupError):
    """No artifact is stored under the URI."""


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact is and what it must hash to: record all four fields."""

    uri: str
    sha256: str
    format: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactRef:
        return cls(uri=data["uri"], sha256=data["sha256"], format=data["format"],
                   size=int(data["size"]))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_uri(uri: str) -> tuple[str, str]:
    """`cas://<sha><suffix>` → (sha, suffix); ValueError naming the URI otherwise."""
    m = _URI_RE.fullmatch(uri) if isinstance(uri, str) else None
    if m is None:
        raise ValueError(f"not an artifact URI (expected cas://<64 hex sha256><suffix>): {uri!r}")
    return m.group("sha"), m.group("suffix")


class ArtifactStore:
    """Immutable, content-addressed artifacts under a folder or an s3:// root."""

    def __init__(self, root: StorageRoot | str) -> None:
        self.objects = open_object_store(root)
        self.root = Path(root) if isinstance(root, str | Path) else root

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        """The store under CLM_ARTIFACT_ROOT (`settings.artifact_root`)."""
        return cls(settings.artifact_root)

    # -- bytes -------------------------------------------------------------------------
    @staticmethod
    def key_for(uri: str) -> str:
        """The object key of `uri`: always `<sha[:2]>/<sha><suffix>` (the URI rule allows
        no separator, so no URI can name an object elsewhere)."""
        sha, suffix = parse_uri(uri)
        name = f"{sha}{suffix}"
        if "/" in name or os.sep in name:
            raise ValueError(f"artifact URI {uri!r} names an object outside the store")
        return f"{sha[:2]}/{name}"

    def path_for(self, uri: str) -> Path:
        """The file of `uri` in a local store: always `<root>/<sha[:2]>/<sha><suffix>`
        (checked again here so no URI can name a file elsewhere)."""
        key = self.key_for(uri)
        path = self.objects.local_path(key)
        if path is None:
            raise ValueError(f"the artifact store {self.objects.url} has no local files")
        inside = os.path.normpath(path).startswith(os.path.normpath(self.root) + os.sep)
        if not inside:
            raise ValueError(f"artifact URI {uri!r} names a file outside {self.root}")
        return path

    def put_bytes(self, data: bytes, *, fmt: str, suffix: str = "") -> ArtifactRef:
        """Store `data`; returns its reference. Storing the same bytes again is a no-op."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        if not _SUFFIX_RE.match(suffix):
            raise ValueError(f"bad artifact suffix {suffix!r}: use e.g. '.ubj' or '.parquet'")
        if not fmt or not isinstance(fmt, str):
            raise ValueError("fmt must be a non-empty string naming the artifact format")
        data = bytes(data)
        sha = sha256_bytes(data)
        uri = f"{URI_SCHEME}{sha}{suffix}"
        key = self.key_for(uri)
        if self._held_sha(key) != sha:
            # An existing object with the wrong content (a torn or tampered write) is
            # replaced: the name promises this content, so rewriting it is always right.
            self.objects.put(key, data)
        return ArtifactRef(uri=uri, sha256=sha, format=fmt, size=len(data))

    def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        """Read the artifact and verify its hash; `ArtifactCorrupt` on any mismatch."""
        uri_sha, _ = parse_uri(uri)
        if sha256 is not None and sha256 != uri_sha:
            raise ArtifactCorrupt(
                f"expected sha256 {sha256} does not match the URI's {uri_sha} ({uri})"
            )
        key = self.key_for(uri)
        try:
            data = self.objects.get(key)
        except ObjectNotFound:
            raise ArtifactNotFound(f"no artifact {uri} under {self.objects.url}") from None
        actual = sha256_bytes(data)
        if actual != uri_sha:
            raise ArtifactCorrupt(
                f"artifact {uri} is corrupt: content hashes to {actual}, expected {uri_sha} "
                f"({self.objects.describe(key)})"
            )
        return data

    def exists(self, uri: str) -> bool:
        return self.objects.exists(self.key_for(uri))

    # -- frames ------------------------------------------------------------------------
    def put_frame(self, frame: pd.DataFrame) -> ArtifactRef:
        """Store a DataFrame as parquet (index and `frame.attrs` kept).

        The bytes are deterministic for the same frame and library versions, so storing
        the same data twice gives the same URI.
        """
        return self.put_bytes(frame_to_parquet(frame), fmt="parquet", suffix=".parquet")

    def get_frame(self, uri: str, sha256: str | None = None) -> pd.DataFrame:
        return parquet_to_frame(self.get_bytes(uri, sha256))

    # -- JSON --------------------------------------------------------------------------
    def put_json(self, obj: Any) -> ArtifactRef:
        """Store a JSON document in canonical form (sorted keys, compact)."""
        data = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return self.put_bytes(data.encode("utf-8"), fmt="json", suffix=".json")

    def get_json(self, uri: str, sha256: str | None = None) -> Any:
        return json.loads(self.get_bytes(uri, sha256).decode("utf-8"))

    # -- internals ---------------------------------------------------------------------
    def _held_sha(self, key: str) -> str | None:
        """sha256 of what is stored under `key` now (None when nothing is)."""
        try:
            return sha256_bytes(self.objects.get(key))
        except ObjectNotFound:
            return None


def frame_to_parquet(frame: pd.DataFrame) -> bytes:
    """Deterministic parquet bytes of `frame` (no timestamps or random ids in the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    table = pa.Table.from_pandas(frame, preserve_index=True)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def parquet_to_frame(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pandas()


def dataset_hash(frame: pd.DataFrame) -> str:
    """sha256 of the canonical bytes of a data slice: identical data ↔ identical hash.

    Canonical form: a JSON header (column names, index name, row count), then the index
    as int64 UTC nanoseconds (or float64 for a non-datetime index), then each column as
    little-endian float64 with NaN normalised. Independent of the frame's storage (dtype
    width, time unit, memory layout) and of pandas/pyarrow versions.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    h = hashlib.sha256()
    header = {
        "columns": [str(c) for c in frame.columns],
        "index": frame.index.name,
        "rows": len(frame),
    }
    h.update(json.dumps(header, sort_keys=True).encode("utf-8"))
    idx = frame.index
    if isinstance(idx, pd.DatetimeIndex):
        idx_utc = idx.tz_convert("UTC") if idx.tz is not None else idx.tz_localize("UTC")
        h.update(idx_utc.as_unit("ns").asi8.astype("<i8").tobytes())
    else:
        h.update(_canonical_floats(idx.to_numpy(), "index"))
    for col in frame.columns:
        h.update(_canonical_floats(frame[col].to_numpy(), str(col)))
    return h.hexdigest()


def _canonical_floats(values: np.ndarray, name: str) -> bytes:
    try:
        arr = np.asarray(values, dtype="<f8")
    except (TypeError, ValueError):
        raise ValueError(f"column {name!r} is not numeric; dataset_hash needs numbers") from None
    arr = np.where(np.isnan(arr), np.nan, arr).astype("<f8")  # one NaN bit pattern
    return arr.tobytes()
