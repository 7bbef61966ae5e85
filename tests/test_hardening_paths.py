"""Issue 19, finding 1: a symbol is never a path component that leaves its folder.

`.` and `..` (and hidden `.X` folders) are refused by the one symbol rule
(app.core.domain.normalize_symbol); every place that builds a path from a user value
checks again that the path stays inside its store: the market data store (symbol), the
artifact store (URI). The API answers 422 naming `symbol`; the CLI exits 2 naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.domain import is_model_id, make_model_id, normalize_symbol, split_model_id
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import MarketDataStore
from tests.test_cli_data_backtest import cli_env, clm, prices_csv
from tests.test_data_store import bars

BAD_SYMBOLS = [".", "..", "...", ".hidden", "-X", "_X", "../X", "A/B", "A\\B", "", " "]


@pytest.mark.parametrize("symbol", BAD_SYMBOLS)
def test_the_symbol_rule_refuses_path_components(symbol: str) -> None:
    with pytest.raises(ValueError, match="invalid symbol"):
        normalize_symbol(symbol)


def test_real_symbols_still_pass() -> None:
    for symbol in ("BTCUSDT", "brk.b", "ES1-2024", "0700.HK", "X", "A..B", "EUR_USD"):
        assert normalize_symbol(symbol) == symbol.upper()


def test_model_ids_cannot_carry_a_path_component() -> None:
    for bad in ("xgboost_.._1h", "xgboost_._1h", "xgboost_.x_1h", "xgboost_-x_1h"):
        assert not is_model_id(bad) and split_model_id(bad) is None
    with pytest.raises(ValueError):
        make_model_id("xgboost", "..", "1h")
    assert split_model_id("xgboost_brk.b_1h") == ("xgboost", "BRK.B", "1h")


@pytest.mark.parametrize("symbol", [".", "..", ".hidden"])
def test_store_path_for_stays_inside_the_store(tmp_path: Path, symbol: str) -> None:
    store = MarketDataStore(tmp_path / "data")
    for call in (lambda: store.path_for(symbol, "1h"),
                 lambda: store.merge(symbol, "1h", bars(range(3))),
                 lambda: store.read(symbol, "1h"),
                 lambda: store.coverage(symbol, "1h"),
                 lambda: store.gap_counts(symbol, "1h")):
        with pytest.raises(ValueError, match="invalid symbol"):
            call()
    assert not (tmp_path / "1h.parquet").exists()
    assert not (tmp_path / "data" / "1h.parquet").exists()


def test_store_path_for_refuses_a_symlink_out_of_the_store(tmp_path: Path) -> None:
    """Defence in depth: a folder that resolves elsewhere is not the series' folder."""
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "EVIL").symlink_to(tmp_path / "elsewhere")
    store = MarketDataStore(root)
    with pytest.raises(ValueError, match="outside the market data store"):
        store.merge("EVIL", "1h", bars(range(3)))
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert store.path_for("GOOD", "1h") == root / "GOOD" / "1h.parquet"


def test_artifact_paths_stay_inside_the_artifact_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha = "a" * 64
    for uri in (f"cas://{sha}/../../x", f"cas://{sha}.json\n", f"cas://../{sha}",
                f"cas://{sha}./..", f"cas://{sha}.json/x"):
        with pytest.raises(ValueError):
            store.path_for(uri)
    ref = store.put_json({"a": 1})
    assert store.path_for(ref.uri).resolve().is_relative_to((tmp_path / "artifacts").resolve())


@pytest.mark.parametrize("symbol", [".", ".."])
def test_cli_import_refuses_path_symbols(tmp_path: Path, symbol: str) -> None:
    env = cli_env(tmp_path)
    f = tmp_path / "a.csv"
    prices_csv(f, 5)
    r = clm(env, "data", "import", str(f), "--symbol", symbol, "--timeframe", "1h")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "symbol" in r.stderr and "invalid symbol" in r.stderr
    assert not list(tmp_path.rglob("1h.parquet"))


def test_api_refuses_path_symbols(shared_api: tuple[Any, Any]) -> None:
    client, auth = shared_api
    bodies = {
        "/clm/train": {"model_type": "xgboost", "timeframe": "1h", "dataset_span_days": 1},
        "/clm/models": {"model_type": "xgboost", "timeframe": "1h", "metrics": {"sharpe": 1.0}},
        "/clm/evolve": {"model_type": "xgboost", "timeframe": "1h", "dataset_span_days": 1},
        "/clm/tracked": {"model_type": "xgboost", "timeframe": "1h"},
    }
    for path, body in bodies.items():
        for symbol in (".", "..", ".x"):
            r = client.post(path, json={**body, "symbol": symbol}, headers=auth("admin"))
            assert r.status_code == 422, (path, symbol, r.status_code, r.get_json())
            assert r.mimetype == "application/problem+json"
            assert [e["field"] for e in r.get_json()["errors"]] == ["symbol"], r.get_json()
    r = client.get("/clm/models?symbol=..", headers=auth("viewer"))
    assert r.status_code == 422 and r.get_json()["errors"][0]["field"] == "symbol"
    # a model id with a path symbol names nothing
    r = client.get("/clm/models/xgboost_.._1h/versions", headers=auth("viewer"))
    assert r.status_code in (404, 422), r.get_json()
