"""Files in an S3-compatible store vs a local folder: the same store operations, timed.

Run: .venv/bin/python bench/bench_object_storage.py [--bars 50000] [--repeat 10]

One process, the same code paths (app.ml.data.store, app.ml.artifacts); the S3 side is
a `moto_server` on 127.0.0.1 (tests/support/objectstore.py; pure Python, so its own
request handling dominates: a real S3 adds network latency, MinIO on a LAN less), the
local side a temporary folder. Registry: SQLite, so an S3 merge takes the file lock
beside the database, not PostgreSQL's advisory lock (that adds one round trip).
Operations on a series of --bars 1h bars: merge 24 new bars (read-modify-write of the
whole object), read the last 90 days, `extent` (what POST /clm/train asks: the catalog,
one HEAD on S3 when the series has not changed), `coverage`; and an artifact put + get of
1 MiB (new bytes each time). Prints the median per operation and the ratio S3 / local.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn: Callable[[int], object], repeat: int) -> float:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _measure(settings: object, bars: int, repeat: int) -> dict[str, float]:
    import numpy as np
    import pandas as pd

    from app.ml.artifacts import ArtifactStore
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    store = MarketDataStore.from_settings(settings)  # type: ignore[arg-type]
    artifacts = ArtifactStore.from_settings(settings)  # type: ignore[arg-type]
    base = generate_ohlcv("random_walk", bars + 24 * repeat, seed=3)
    store.merge("BENCH", "1h", base.iloc[:bars])
    last = base.index[bars - 1]
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(1 << 20) for _ in range(repeat)]
    out = {
        "merge 24 bars": _median_ms(
            lambda i: store.merge("BENCH", "1h", base.iloc[bars + 24 * i: bars + 24 * (i + 1)]),
            repeat),
        "read 90 days": _median_ms(
            lambda i: store.read("BENCH", "1h", last - pd.Timedelta(days=90)), repeat),
        "extent (catalog)": _median_ms(lambda i: store.extent("BENCH", "1h"), repeat * 5),
        "coverage": _median_ms(lambda i: store.coverage("BENCH", "1h"), repeat),
    }
    refs = []
    out["artifact put 1 MiB"] = _median_ms(
        lambda i: refs.append(artifacts.put_bytes(blobs[i], fmt="raw", suffix=".bin")), repeat)
    out["artifact get 1 MiB"] = _median_ms(
        lambda i: artifacts.get_bytes(refs[i].uri, refs[i].sha256), repeat)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    from app.core.config import load_settings
    from tests.support.objectstore import TEST_ENV, MotoServer, new_bucket

    tmp = Path(tempfile.mkdtemp(prefix="clm-bench-s3-"))
    os.environ.update(TEST_ENV)  # fake credentials for the local moto server only
    server = MotoServer(tmp / "moto.log")
    try:
        bucket = new_bucket(server)
        common = {"CLM_VAR_DIR": str(tmp / "var"), "CLM_LOG_JSON": "0"}
        local = load_settings({**common, "CLM_DATA_DIR": str(tmp / "data"),
                               "CLM_ARTIFACT_ROOT": str(tmp / "artifacts")})
        remote = load_settings({**common, **bucket.env()})
        figures = {"local": _measure(local, args.bars, args.repeat),
                   "s3": _measure(remote, args.bars, args.repeat)}
    finally:
        server.close()
    print(f"load average {os.getloadavg()[0]:.1f}; series {args.bars} 1h bars; "
          f"median of {args.repeat} (extent: {args.repeat * 5})")
    print(f"{'operation':<22}{'local ms':>10}{'s3 (moto) ms':>14}{'s3 / local':>12}")
    for op, local_ms in figures["local"].items():
        s3_ms = figures["s3"][op]
        print(f"{op:<22}{local_ms:>10.2f}{s3_ms:>14.2f}{s3_ms / local_ms:>11.1f}×")


if __name__ == "__main__":
    main()
