"""The series catalog: each stored series' extent, kept when the series is written.

Owns `SeriesExtent` (first and last bar, row count, and the gap-free runs of bars, so
the rows in any window are counted exactly without reading the Parquet file),
`extent_of_timestamps`, and the sidecar `root/SYMBOL/.<timeframe>.catalog.json` that
`MarketDataStore._write` replaces right after the Parquet file (the one place a series
is written). A sidecar names the version token of the Parquet object it describes
(a local file's size, mtime and inode; an S3 object's size and ETag —
app.core.objectstore): an object written by anything else (or a crash between the two
writes) no longer matches, and the store derives the extent from the file's timestamp
column instead. Readers keep the last extent per object in process memory, checked by
one `stat` (a HEAD on S3), so a request path pays a stat, not a file read.

Why a sidecar and not a database table: the store owns its files and has no database
(the CLI import, the feeds and the demo write it without a session); a sidecar replaced
under the store's merge lock, next to the file it describes, cannot describe another
version of the data than the one a reader opens without also failing the stat check.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.objectstore import ObjectStat, ObjectStore

__all__ = ["SeriesExtent", "cached_extent", "extent_of_timestamps", "sidecar_key",
           "sidecar_path", "write_sidecar"]

_VERSION = 1


@dataclass(frozen=True)
class SeriesExtent:
    """A stored series' bars as runs: run i holds `run_counts[i]` bars `bar_ns` apart
    starting at `run_starts[i]` (int64 UTC ns); runs are sorted and do not overlap."""

    first_ns: int
    last_ns: int
    rows: int
    bar_ns: int
    run_starts: np.ndarray
    run_counts: np.ndarray

    def rows_between(self, lo_ns: int, hi_ns: int) -> int:
        """Bars with lo_ns <= timestamp <= hi_ns (exact: the runs are the timestamps)."""
        s, c, bar = self.run_starts, self.run_counts, self.bar_ns
        first_i = np.maximum(0, -((s - lo_ns) // bar))  # ceil((lo − s) / bar), at least 0
        last_i = np.minimum(c - 1, (hi_ns - s) // bar)
        return int(np.maximum(0, last_i - first_i + 1).sum())


def extent_of_timestamps(ns: np.ndarray, bar_ns: int) -> SeriesExtent | None:
    """The extent of sorted, unique int64 timestamps (None when there are none)."""
    if len(ns) == 0:
        return None
    breaks = np.flatnonzero(np.diff(ns) != bar_ns) + 1
    first_rows = np.concatenate([[0], breaks])
    counts = np.diff(first_rows, append=len(ns))
    return SeriesExtent(int(ns[0]), int(ns[-1]), len(ns), int(bar_ns),
                        ns[first_rows].astype(np.int64), counts.astype(np.int64))


def sidecar_path(parquet: Path) -> Path:
    return parquet.parent / f".{parquet.stem}.catalog.json"


def sidecar_key(key: str) -> str:
    """`SYMBOL/1h.parquet` → `SYMBOL/.1h.catalog.json`."""
    folder, _, name = key.rpartition("/")
    side = f".{name.rsplit('.', 1)[0]}.catalog.json"
    return f"{folder}/{side}" if folder else side


def write_sidecar(objects: ObjectStore, key: str, written: ObjectStat,
                  extent: SeriesExtent | None) -> None:
    """Describe the Parquet object just published at `key` (`written`: what its put
    answered); call under the merge lock, after that put. Not durable: a lost sidecar
    is derived again from the file."""
    side = sidecar_key(key)
    if extent is None:
        objects.delete(side)
        return
    doc = {"version": _VERSION, "file": list(written.token), "rows": extent.rows,
           "bar_ns": extent.bar_ns, "run_starts": extent.run_starts.tolist(),
           "run_counts": extent.run_counts.tolist()}
    objects.put(side, json.dumps(doc, separators=(",", ":")).encode(), durable=False)
    _remember(objects, key, list(written.token), extent)


# (store root, key) -> (version token, extent): the extent of the object version last
# seen by this process.
_cache: dict[tuple[str, str], tuple[list[Any], SeriesExtent | None]] = {}
_cache_lock = threading.Lock()


def _remember(objects: ObjectStore, key: str, token: list[Any],
              extent: SeriesExtent | None) -> None:
    with _cache_lock:
        _cache[(objects.url, key)] = (token, extent)


def _from_sidecar(objects: ObjectStore, key: str, token: list[Any],
                  bar_ns: int) -> SeriesExtent | bool | None:
    """The sidecar's extent when it describes this object version, else False."""
    try:
        doc = json.loads(objects.get(sidecar_key(key)))
    except (OSError, ValueError):
        return False
    if (not isinstance(doc, dict) or doc.get("version") != _VERSION or doc.get("file") != token
            or doc.get("bar_ns") != bar_ns):
        return False
    starts = np.asarray(doc["run_starts"], dtype=np.int64)
    counts = np.asarray(doc["run_counts"], dtype=np.int64)
    if not len(starts):
        return None
    last = int(starts[-1] + (counts[-1] - 1) * bar_ns)
    return SeriesExtent(int(starts[0]), last, int(doc["rows"]), bar_ns, starts, counts)


def cached_extent(objects: ObjectStore, key: str, bar_ns: int,
                  derive: Callable[[], SeriesExtent | None]) -> SeriesExtent | None:
    """The extent of the object at `key` now: from memory when it has not changed, else
    its sidecar, else `derive()` (reads the file's timestamps; may raise).
    FileNotFoundError when there is no such object."""
    stat = objects.stat(key)
    if stat is None:
        raise FileNotFoundError(objects.describe(key))
    token = list(stat.token)
    hit = _cache.get((objects.url, key))
    if hit is not None and hit[0] == token and (hit[1] is None or hit[1].bar_ns == bar_ns):
        return hit[1]
    found = _from_sidecar(objects, key, token, bar_ns)
    if found is False:
        found = derive()
    _remember(objects, key, token, found)
    return found
