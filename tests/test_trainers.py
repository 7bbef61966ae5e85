"""Trainers: real fits, artifact round trips, determinism, param validation, plug-in registry."""

from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import pandas as pd
import pytest

from app.ml.artifacts import ArtifactCorrupt, ArtifactStore
from app.ml.data.synthetic import generate_ohlcv
from app.ml.features import build_features, make_labels, warmup_bars
from app.ml.trainers import (
    ENTRY_POINT_GROUP,
    InvalidParams,
    Trainer,
    TrainerNotAvailable,
    available_trainers,
    get_trainer,
    load_model,
    save_model,
)
from app.ml.trainers.lightgbm_trainer import LightGBMTrainer
from app.ml.trainers.xgboost_trainer import XGBoostTrainer

BUILT_INS = {"xgboost": (XGBoostTrainer, "xgboost-ubj", ".ubj"),
             "lightgbm": (LightGBMTrainer, "lightgbm-txt", ".txt")}
SMALL = {"n_estimators": 40}


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    frame = generate_ohlcv("planted", 1600, seed=4)
    X = build_features(frame).iloc[warmup_bars():-1]
    y = make_labels(frame).iloc[warmup_bars():-1].to_numpy()
    return X.iloc[:1200], y[:1200], X.iloc[1200:], y[1200:]


@pytest.mark.parametrize("model_type", sorted(BUILT_INS))
def test_fit_predict_and_round_trip_through_the_artifact_store(model_type, data, tmp_path):
    X_train, y_train, X_test, y_test = data
    trainer = get_trainer(model_type)
    cls, fmt, suffix = BUILT_INS[model_type]
    assert isinstance(trainer, cls) and isinstance(trainer, Trainer)
    model = trainer.fit(X_train, y_train, SMALL, seed=0, n_threads=1)
    proba = trainer.predict_proba(model, X_test, n_threads=1)
    assert proba.shape == (len(X_test),) and ((proba >= 0) & (proba <= 1)).all()
    assert proba.std() > 0.01  # it learned something, not a constant
    # Planted trends are learnable: clearly better than a coin on unseen bars.
    assert np.mean((proba > 0.5) == (y_test == 1.0)) > 0.55

    store = ArtifactStore(tmp_path)
    ref = save_model(store, trainer, model)
    assert ref.format == fmt and ref.uri.endswith(suffix)
    loaded = load_model(store, trainer, ref.uri, ref.sha256)
    np.testing.assert_array_equal(trainer.predict_proba(loaded, X_test, n_threads=1), proba)
    # Plain numpy input (no column names) predicts identically to the DataFrame.
    np.testing.assert_array_equal(trainer.predict_proba(loaded, X_test.to_numpy()), proba)
    assert not trainer.dump(model).startswith(b"\x80")  # not a pickle

    path = store.path_for(ref.uri)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x20
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactCorrupt):
        load_model(store, trainer, ref.uri, ref.sha256)


@pytest.mark.parametrize("model_type", sorted(BUILT_INS))
def test_training_is_deterministic_given_seed_and_threads(model_type, data):
    X_train, y_train, X_test, _ = data
    trainer = get_trainer(model_type)
    a = trainer.fit(X_train, y_train, SMALL, seed=7, n_threads=1)
    b = trainer.fit(X_train, y_train, SMALL, seed=7, n_threads=1)
    assert trainer.dump(a) == trainer.dump(b)
    c = trainer.fit(X_train, y_train, SMALL, seed=8, n_threads=1)  # row/feature sampling
    assert not np.array_equal(trainer.predict_proba(a, X_test), trainer.predict_proba(c, X_test))


@pytest.mark.parametrize("model_type", sorted(BUILT_INS))
def test_defaults_are_small_and_sensible(model_type):
    trainer = get_trainer(model_type)
    p = trainer.validate_params({})
    assert p == trainer.default_params()
    assert p["n_estimators"] == 200 and p["max_depth"] == 4 and p["learning_rate"] == 0.05
    assert trainer.validate_params({"n_estimators": 300.0})["n_estimators"] == 300


@pytest.mark.parametrize(
    ("model_type", "params", "key", "fragment"),
    [
        ("xgboost", {"max_dpth": 3}, "max_dpth", "unknown xgboost hyperparameter 'max_dpth'"),
        ("xgboost", {"learning_rate": 0.0}, "learning_rate", "out of range"),
        ("xgboost", {"subsample": 1.5}, "subsample", "out of range"),
        ("xgboost", {"n_estimators": 2.5}, "n_estimators", "must be an integer"),
        ("xgboost", {"max_depth": True}, "max_depth", "must be a number"),
        ("xgboost", {"gamma": float("inf")}, "gamma", "finite"),
        ("xgboost", {"nthread": 4}, "nthread", "unknown"),
        ("lightgbm", {"num_leaves": 1}, "num_leaves", "out of range"),
        ("lightgbm", {"max_depth": 0}, "max_depth", "-1"),
        ("lightgbm", {"colsample_bytree": "0.5"}, "colsample_bytree", "must be a number"),
        ("lightgbm", {"boosting": "dart"}, "boosting", "unknown lightgbm hyperparameter"),
    ],
)
def test_bad_params_are_refused_naming_the_key(model_type, params, key, fragment, data):
    trainer = get_trainer(model_type)
    with pytest.raises(InvalidParams, match=fragment) as info:
        trainer.validate_params(params)
    assert info.value.key == key and repr(key) in str(info.value)
    X_train, y_train, _, _ = data
    with pytest.raises(InvalidParams):  # fit validates too: nothing trains on bad params
        trainer.fit(X_train, y_train, params, seed=0, n_threads=1)


@pytest.mark.parametrize("model_type", sorted(BUILT_INS))
def test_bad_training_input_is_refused(model_type, data):
    X_train, y_train, _, _ = data
    trainer = get_trainer(model_type)
    with pytest.raises(ValueError, match="only class"):
        trainer.fit(X_train, np.ones(len(X_train)), SMALL, seed=0, n_threads=1)
    with pytest.raises(ValueError, match="labels must be 0 or 1; row 3"):
        bad = y_train.copy()
        bad[3] = np.nan
        trainer.fit(X_train, bad, SMALL, seed=0, n_threads=1)
    with pytest.raises(ValueError, match="labels but X has"):
        trainer.fit(X_train, y_train[:-1], SMALL, seed=0, n_threads=1)
    with pytest.raises(ValueError, match="n_threads"):
        trainer.fit(X_train, y_train, SMALL, seed=0, n_threads=0)


def test_built_ins_are_discovered_through_entry_points():
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert eps["xgboost"].value == "app.ml.trainers.xgboost_trainer:XGBoostTrainer"
    assert eps["lightgbm"].value == "app.ml.trainers.lightgbm_trainer:LightGBMTrainer"
    assert eps["xgboost"].load() is XGBoostTrainer
    assert {"xgboost", "lightgbm"} <= set(available_trainers())


@pytest.mark.parametrize("model_type", ["prophet", "catboost"])
def test_unknown_model_type_names_what_to_install(model_type):
    with pytest.raises(TrainerNotAvailable) as info:
        get_trainer(model_type)
    msg = str(info.value)
    assert info.value.model_type == model_type
    assert f"no trainer for model type {model_type!r}" in msg
    assert "install" in msg and "clm.trainers" in msg and repr(model_type) in msg
    assert "xgboost" in msg  # and lists what is available
