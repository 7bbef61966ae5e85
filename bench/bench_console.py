"""Web console page times with 1,000 versions in the registry, against the JSON API.

Run: .venv/bin/python bench/bench_console.py [--db sqlite|postgresql] [--models 20]
         [--versions 50] [--repeat 15]

The registry is seeded through the registry service (`--models` × `--versions`
versions, one production version per model with stored diagnostics and a 500-bar live
record; a 3-generation strategy search), then the app is served on a loopback threaded
server and each console page is fetched `--repeat` times with a viewer's bearer token
(the same auth work as a browser's cookie, one token lookup per request). Baseline in the
same run: the JSON calls that return the same figures (e.g. the model page against the
listing, the version, its live record and report, and the serving answer). Prints the
median and worst time per page, the JSON median and the ratio. Target: every page under
300 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLM_LOG_JSON", "0")

TARGET_MS = 300.0


def _seed(url: str, models: int, versions: int) -> tuple[str, str, str]:
    from app.db import transaction
    from app.services import registry
    from app.services.auth import create_token
    from tests.support import console_state as cs

    first_model = first_prod = ""
    for m in range(models):
        model_id = f"xgboost_bench{m:03d}_1h"
        prod = ""
        with transaction(url, immediate=True) as session:
            for v in range(versions):
                row = registry.register_version(
                    session, model_type="xgboost", symbol=f"BENCH{m:03d}", timeframe="1h",
                    metrics=cs.metrics(1.0 + v / 100), actor="bench",
                    evaluation={"diagnostics": cs.diagnostics()} if v == versions - 1
                    else None)
                prod = row["version"]
            registry.promote(session, model_id, prod, actor="bench", reason="bench")
        cs.add_live_record(url, model_id, prod, bars=500)
        if not first_model:
            first_model, first_prod = model_id, prod
    search_id = cs.add_search(url, first_model)
    with transaction(url) as session:
        token = create_token(session, role="viewer", name="bench-viewer")
    return token, f"{first_model}|{first_prod}", search_id


def _time(http, url: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        r = http.get(url, timeout=30)
        elapsed = (time.perf_counter() - start) * 1000
        if r.status_code != 200:
            raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")
        times.append(elapsed)
    return times[1:]  # the first is a warm-up


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    import requests

    from app import create_app
    from app.core.config import load_settings
    from tests.support.browser import serve
    from tests.support.services import PostgresDatabases, SqliteDatabases

    root = Path(tempfile.mkdtemp(prefix="bench-console-"))
    pg = PostgresDatabases() if args.db == "postgresql" else None
    url = pg.migrated() if pg else SqliteDatabases(root).migrated()
    settings = load_settings({"CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(root / "var")})
    t0 = time.perf_counter()
    token, first, search_id = _seed(url, args.models, args.versions)
    model_id, prod = first.split("|")
    print(f"seeded {args.models * args.versions} versions ({args.models} models) on "
          f"{args.db} in {time.perf_counter() - t0:.1f} s; load average "
          f"{os.getloadavg()[0]:.2f}")
    app = create_app(settings)
    v = f"/clm/models/{model_id}/versions/{prod}"
    pages = {
        "/ui/": ["/clm/status", "/clm/models?status=production&limit=50"],
        f"/ui/models/{model_id}": [f"/clm/models?model_id={model_id}&limit=50", v,
                                   f"{v}/live", f"{v}/report",
                                   f"/clm/models/{model_id}/serving",
                                   f"/clm/audit?model_id={model_id}"],
        "/ui/jobs": ["/clm/jobs?limit=50"],
        "/ui/triggers": ["/clm/triggers?limit=50", "/clm/drift?limit=50"],
        "/ui/searches": ["/clm/jobs?limit=50"],
        f"/ui/searches/{search_id}": [f"/clm/searches/{search_id}",
                                      f"/clm/candidates?search_id={search_id}&limit=500"],
        "/ui/audit": ["/clm/audit?limit=100"],
    }
    failed = 0
    with serve(app) as base, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        print(f"{'page':<44} {'median ms':>10} {'max ms':>8} {'JSON ms':>8} {'ratio':>6}")
        for page, equivalents in pages.items():
            times = _time(http, base + page, args.repeat)
            json_ms = sum(statistics.median(_time(http, base + p, args.repeat))
                          for p in equivalents)
            median = statistics.median(times)
            failed += median >= TARGET_MS
            print(f"{page[:44]:<44} {median:>10.1f} {max(times):>8.1f} {json_ms:>8.1f} "
                  f"{median / json_ms:>5.2f}×")
    print(f"target: every page's median under {TARGET_MS:.0f} ms — "
          f"{'met' if not failed else f'NOT met on {failed} page(s)'}")
    if pg is not None:
        pg.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
