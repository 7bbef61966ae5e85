"""Deep forecasters: NHITS and PatchTST from neuralforecast (the `[deep]` extra).

Owns `NHITSTrainer` (entry point `nhits`), `PatchTSTTrainer` (`patchtst`) and their
hyperparameter specs. Both are `signal_kind = "forecaster"`: the network reads the last
`lookback` one-bar log returns of a row (its `lag_*` features, causal) and predicts the
returns into the next `horizon` bars; their sum r̂ becomes the row's score through
`app.ml.trainers.forecast_score` with edge = `min_edge_bps` (by default the job's round
trip cost), so a position opens only when the expected move beats the costs.

The networks are neuralforecast's own modules (the reference implementations); the
training loop is ours — Adam on the mean squared error of returns scaled by their
training std, minibatches drawn from a seeded generator — because Lightning's trainer
brings its own process and device handling where a Celery work item needs a bounded,
repeatable CPU run. Artifacts: safetensors weights + JSON config (`torch_support.pack`);
loading rebuilds the module from the config. torch and neuralforecast are imported on
first use, never by the web process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from app.ml.trainers import (
    InvalidParams,
    ParamSpec,
    check_threads,
    forecast_score,
    validate_against,
)
from app.ml.trainers.sequence import forward_returns, lag_window
from app.ml.trainers.torch_support import pack, torch_device, torch_session, unpack_for

__all__ = ["NHITS_PARAMS", "PATCHTST_PARAMS", "NHITSTrainer", "PatchTSTTrainer"]

_COMMON: dict[str, ParamSpec] = {
    "lookback": ParamSpec(int, 48, 8, 512, doc="input window: past one-bar returns"),
    "horizon": ParamSpec(int, 4, 1, 64, doc="bars ahead the network forecasts"),
    "max_steps": ParamSpec(int, 300, 1, 100_000, doc="optimizer steps"),
    "batch_size": ParamSpec(int, 64, 4, 8192, doc="windows per step"),
    "learning_rate": ParamSpec(float, 1e-3, 0.0, 1.0, low_inclusive=False, doc="Adam"),
    "min_edge_bps": ParamSpec(float, None, 0.0, 10_000.0, nullable=True,
                              doc="expected move (bps) a position needs; null = the "
                                  "job's round trip cost"),
}
NHITS_PARAMS: dict[str, ParamSpec] = {
    **_COMMON,
    "hidden_size": ParamSpec(int, 64, 4, 2048, doc="units of each MLP layer"),
    "dropout": ParamSpec(float, 0.0, 0.0, 0.9, doc="dropout on the basis coefficients"),
}
PATCHTST_PARAMS: dict[str, ParamSpec] = {
    **_COMMON,
    "patch_len": ParamSpec(int, 8, 2, 128, doc="bars per patch"),
    "stride": ParamSpec(int, 4, 1, 128, doc="bars between patch starts"),
    "hidden_size": ParamSpec(int, 32, 4, 1024, doc="transformer width"),
    "n_heads": ParamSpec(int, 4, 1, 32, doc="attention heads (divide hidden_size)"),
    "encoder_layers": ParamSpec(int, 2, 1, 12, doc="transformer layers"),
    "dropout": ParamSpec(float, 0.1, 0.0, 0.9, doc="dropout"),
}
_DEFAULT_EDGE_BPS = 10.0  # round trip of the default 5 bps fee, when no job filled it
_PREDICT_BATCH = 4096


class _Forecaster:
    """What NHITS and PatchTST share: data, loop, score, artifact."""

    signal_kind = "forecaster"
    artifact_format = "safetensors+json"
    artifact_suffix = ".safetensors"
    requires = ("torch", "neuralforecast", "safetensors")
    model_type = ""
    specs: dict[str, ParamSpec] = {}

    # -- params ---------------------------------------------------------------------
    def default_params(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in self.specs.items()}

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        p = validate_against(self.specs, params, self.model_type)
        self._cross_check(p)
        return p

    def _cross_check(self, p: dict[str, Any]) -> None:
        """Constraints between parameters (InvalidParams naming the key)."""

    def feature_windows(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"lags": (int(self.validate_params(params)["lookback"]),)}

    # -- the network ----------------------------------------------------------------
    def _init_kwargs(self, p: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _build(self, init: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    @staticmethod
    def _forward(module: Any, x: Any, horizon: int) -> Any:
        import torch

        batch = {"insample_y": x.unsqueeze(-1), "insample_mask": torch.ones_like(x).unsqueeze(-1),
                 "futr_exog": None, "hist_exog": None, "stat_exog": None}
        out = module(batch)
        return out.reshape(x.shape[0], horizon, -1)[..., 0]

    # -- fit / predict --------------------------------------------------------------
    def fit(self, X: Any, y: Any, params: Mapping[str, Any] | None, *, seed: int,
            n_threads: int) -> dict[str, Any]:
        p = self.validate_params(params)
        threads = check_threads(n_threads)
        lookback, horizon = int(p["lookback"]), int(p["horizon"])
        windows = lag_window(X, lookback).astype(np.float64)
        targets = forward_returns(X, horizon)
        windows = windows[:len(targets)]  # the last h rows have no target inside X
        scale = float(windows[:, -1].std()) or 1.0
        init = self._init_kwargs(p)
        device = torch_device()
        with torch_session(seed, threads) as torch:
            module = self._build(init).to(device)
            module.train()
            xs = torch.from_numpy((windows / scale).astype(np.float32)).to(device)
            ys = torch.from_numpy((targets / scale).astype(np.float32)).to(device)
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.Adam(module.parameters(), lr=float(p["learning_rate"]))
            batch = min(int(p["batch_size"]), len(xs))
            for _ in range(int(p["max_steps"])):
                idx = torch.randint(0, len(xs), (batch,), generator=gen).to(device)
                loss = torch.mean((self._forward(module, xs[idx], horizon) - ys[idx]) ** 2)
                opt.zero_grad()
                loss.backward()
                opt.step()
            module.eval()
        edge = p["min_edge_bps"]
        config = {"arch": self.model_type, "init": init, "lookback": lookback,
                  "horizon": horizon, "scale": scale,
                  "edge_bps": float(_DEFAULT_EDGE_BPS if edge is None else edge),
                  "train_rows": len(windows), "format": 1}
        return {"module": module.to("cpu"), "config": config}

    def predicted_returns(self, model: Mapping[str, Any], X: Any, *,
                          n_threads: int = 1) -> np.ndarray:
        """r̂ per row: the forecast log return over the next `horizon` bars."""
        cfg = model["config"]
        windows = lag_window(X, int(cfg["lookback"])).astype(np.float64) / cfg["scale"]
        module = model["module"]
        out = np.empty(len(windows), dtype=np.float64)
        with torch_session(0, check_threads(n_threads)) as torch, torch.no_grad():
            for i in range(0, len(windows), _PREDICT_BATCH):
                xs = torch.from_numpy(windows[i:i + _PREDICT_BATCH].astype(np.float32))
                pred = self._forward(module, xs, int(cfg["horizon"])).double().numpy()
                out[i:i + len(xs)] = pred.sum(axis=1) * cfg["scale"]
        return out

    def predict_proba(self, model: Mapping[str, Any], X: Any, *,
                      n_threads: int = 1) -> np.ndarray:
        r = self.predicted_returns(model, X, n_threads=n_threads)
        return forecast_score(r, float(model["config"]["edge_bps"]) / 1e4)

    # -- artifact -------------------------------------------------------------------
    def dump(self, model: Mapping[str, Any]) -> bytes:
        return pack(model["module"].state_dict(), model["config"])

    def load(self, data: bytes) -> dict[str, Any]:
        state, config = unpack_for(data, "arch", self.model_type)
        module = self._build(config["init"])
        module.load_state_dict(state, strict=True)
        module.eval()
        return {"module": module, "config": config}


class NHITSTrainer(_Forecaster):
    """NHITS (Challu et al. 2023): stacks of MLPs on pooled inputs at several rates."""

    model_type = "nhits"
    specs = NHITS_PARAMS

    def _init_kwargs(self, p: Mapping[str, Any]) -> dict[str, Any]:
        hidden = int(p["hidden_size"])
        return {"h": int(p["horizon"]), "input_size": int(p["lookback"]),
                "mlp_units": [[hidden, hidden]] * 3, "n_pool_kernel_size": [2, 2, 1],
                "n_freq_downsample": [4, 2, 1], "dropout_prob_theta": float(p["dropout"])}

    def _build(self, init: Mapping[str, Any]) -> Any:
        from neuralforecast.losses.pytorch import MSE
        from neuralforecast.models.nhits import NHITS

        return NHITS(**init, loss=MSE(), scaler_type="identity")


class PatchTSTTrainer(_Forecaster):
    """PatchTST (Nie et al. 2023): a transformer over patches of the input window."""

    model_type = "patchtst"
    specs = PATCHTST_PARAMS

    def _cross_check(self, p: dict[str, Any]) -> None:
        if p["patch_len"] > p["lookback"]:
            raise InvalidParams("patch_len", f"patchtst param 'patch_len' = {p['patch_len']} "
                                             f"must be <= lookback ({p['lookback']})")
        if p["stride"] > p["patch_len"]:
            raise InvalidParams("stride", f"patchtst param 'stride' = {p['stride']} must be "
                                          f"<= patch_len ({p['patch_len']})")
        if p["hidden_size"] % p["n_heads"]:
            raise InvalidParams("n_heads", f"patchtst param 'n_heads' = {p['n_heads']} must "
                                           f"divide hidden_size ({p['hidden_size']})")

    def _init_kwargs(self, p: Mapping[str, Any]) -> dict[str, Any]:
        hidden = int(p["hidden_size"])
        return {"h": int(p["horizon"]), "input_size": int(p["lookback"]),
                "patch_len": int(p["patch_len"]), "stride": int(p["stride"]),
                "hidden_size": hidden, "linear_hidden_size": 2 * hidden,
                "n_heads": int(p["n_heads"]), "encoder_layers": int(p["encoder_layers"]),
                "dropout": float(p["dropout"]), "fc_dropout": float(p["dropout"]),
                "revin": False}

    def _build(self, init: Mapping[str, Any]) -> Any:
        from neuralforecast.losses.pytorch import MSE
        from neuralforecast.models.patchtst import PatchTST

        return PatchTST(**init, loss=MSE(), scaler_type="identity")
