"""RL policies: rl_v2 (PPO, discrete short/flat/long) and rl_v3 (SAC, a continuous
position) from stable-baselines3 (the `[rl]` extra), trained in `TradingEnv`.

Owns `PPOPolicyTrainer` (entry point `rl_v2`), `SACPolicyTrainer` (`rl_v3`) and their
hyperparameter specs. Both are `signal_kind = "policy"`: the deterministic action for a
row (its standardized causal features, the lag window included) is a position q in
[-1, 1], scored (q + 1)/2 (`app.ml.trainers.policy_score`). What distinguishes them:
- rl_v2: PPO (on-policy, clipped policy gradient) over Discrete(3) = {−1, 0, +1};
  many cheap environment steps.
- rl_v3: SAC (off-policy, maximum-entropy actor-critic with a replay buffer) over a
  Box(−1, 1) position, so it can size a position; one gradient step per bar seen.

Artifacts: the policy network's state dict as safetensors + a JSON config (spaces,
layer sizes, the feature standardizer); SB3's own `save` pickles, so it is not used.
Loading rebuilds the policy class from the config. Fees are the job's (the reward is
the backtest's net return); `cost_bps` overrides them per side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from app.ml.trainers import ParamSpec, check_threads, policy_score, validate_against
from app.ml.trainers.sequence import Standardizer, forward_returns
from app.ml.trainers.torch_support import pack, torch_device, torch_session, unpack_for

__all__ = ["PPO_PARAMS", "SAC_PARAMS", "PPOPolicyTrainer", "SACPolicyTrainer"]

_COMMON: dict[str, ParamSpec] = {
    "lookback": ParamSpec(int, 16, 1, 512, doc="past one-bar returns in the observation"),
    "hidden_size": ParamSpec(int, 64, 4, 1024, doc="units of each of two layers"),
    "learning_rate": ParamSpec(float, 3e-4, 0.0, 1.0, low_inclusive=False, doc="Adam"),
    "gamma": ParamSpec(float, 0.5, 0.0, 0.9999, doc="discount per bar"),
    "episode_bars": ParamSpec(int, 256, 8, 1_000_000, doc="bars per episode"),
    "cost_bps": ParamSpec(float, None, 0.0, 1000.0, nullable=True,
                          doc="cost per side in the reward (bps); null = the job's fee + "
                              "slippage"),
}
PPO_PARAMS: dict[str, ParamSpec] = {
    **_COMMON,
    "total_timesteps": ParamSpec(int, 20_000, 64, 10_000_000, doc="environment steps"),
    "n_envs": ParamSpec(int, 8, 1, 256, doc="environments stepped together"),
    "n_steps": ParamSpec(int, 128, 8, 65_536, doc="steps per environment per rollout"),
    "batch_size": ParamSpec(int, 64, 8, 65_536, doc="minibatch"),
    "n_epochs": ParamSpec(int, 4, 1, 100, doc="passes over each rollout"),
    "ent_coef": ParamSpec(float, 0.01, 0.0, 1.0, doc="entropy bonus"),
}
SAC_PARAMS: dict[str, ParamSpec] = {
    **_COMMON,
    "total_timesteps": ParamSpec(int, 4_000, 64, 10_000_000, doc="environment steps"),
    "n_envs": ParamSpec(int, 4, 1, 256, doc="environments stepped together (one "
                                           "gradient step per step of all of them)"),
    "batch_size": ParamSpec(int, 128, 8, 65_536, doc="replay minibatch"),
    "learning_starts": ParamSpec(int, 200, 0, 1_000_000, doc="random steps before learning"),
    "tau": ParamSpec(float, 0.02, 0.0, 1.0, low_inclusive=False, doc="target smoothing"),
}
_DEFAULT_COST_BPS = 5.0  # the default fee, when no job filled the parameter


def _observation_space(dim: int) -> Any:
    import gymnasium as gym

    return gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)


class _Policy:
    signal_kind = "policy"
    artifact_format = "safetensors+json"
    artifact_suffix = ".safetensors"
    requires = ("torch", "stable_baselines3", "gymnasium", "safetensors")
    model_type = ""
    specs: dict[str, ParamSpec] = {}
    discrete = True

    def default_params(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in self.specs.items()}

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return validate_against(self.specs, params, self.model_type)

    def feature_windows(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"lags": (int(self.validate_params(params)["lookback"]),)}

    def _learner(self, env: Any, p: Mapping[str, Any], seed: int, device: Any) -> Any:
        raise NotImplementedError

    def _policy_class(self) -> Any:
        raise NotImplementedError

    def _action_space(self) -> Any:
        import gymnasium as gym

        return (gym.spaces.Discrete(3) if self.discrete else
                gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32))

    def fit(self, X: Any, y: Any, params: Mapping[str, Any] | None, *, seed: int,
            n_threads: int) -> dict[str, Any]:
        from app.ml.trainers.trading_env import TradingEnv

        p = self.validate_params(params)
        threads = check_threads(n_threads)
        names = [str(c) for c in X.columns]
        values = X.to_numpy(dtype=np.float64)
        next_log = forward_returns(X, 1)[:, 0]
        scaler = Standardizer.fit(values[:len(next_log)])
        obs = scaler.apply(values[:len(next_log)])
        cost = (_DEFAULT_COST_BPS if p["cost_bps"] is None else float(p["cost_bps"])) / 1e4
        obs, rets = np.clip(obs, -10, 10), np.expm1(next_log)

        def make_env() -> TradingEnv:
            return TradingEnv(obs, rets, cost=cost, episode_bars=int(p["episode_bars"]),
                              discrete=self.discrete)

        from stable_baselines3.common.vec_env import DummyVecEnv

        # Several copies step together: one batched policy forward per step of all of
        # them, which is where SB3 spends its time on small networks.
        env = DummyVecEnv([make_env] * int(p["n_envs"]))
        with torch_session(seed, threads):
            learner = self._learner(env, p, seed, torch_device())
            learner.learn(total_timesteps=int(p["total_timesteps"]))
        policy = learner.policy.to("cpu")
        policy.set_training_mode(False)
        config = {"algo": self.model_type, "obs_dim": len(names), "features": names,
                  "net_arch": [int(p["hidden_size"])] * 2, "discrete": self.discrete,
                  "scaler": scaler.to_dict(), "format": 1}
        return {"policy": policy, "config": config}

    def positions(self, model: Mapping[str, Any], X: Any, *, n_threads: int = 1) -> np.ndarray:
        """The deterministic position per row, in [-1, 1]."""
        from app.ml.trainers.trading_env import positions_of

        cfg = model["config"]
        missing = [c for c in cfg["features"] if c not in X.columns]
        if missing:
            raise ValueError(f"X lacks feature {missing[0]!r} the policy was trained on")
        scaler = Standardizer.from_dict(cfg["scaler"])
        obs = np.clip(scaler.apply(X[cfg["features"]].to_numpy(dtype=np.float64)), -10, 10)
        with torch_session(0, check_threads(n_threads)):
            actions, _ = model["policy"].predict(obs, deterministic=True)
        return positions_of(actions, bool(cfg["discrete"]))

    def predict_proba(self, model: Mapping[str, Any], X: Any, *,
                      n_threads: int = 1) -> np.ndarray:
        return policy_score(self.positions(model, X, n_threads=n_threads))

    def dump(self, model: Mapping[str, Any]) -> bytes:
        return pack(model["policy"].state_dict(), model["config"])

    def load(self, data: bytes) -> dict[str, Any]:
        state, config = unpack_for(data, "algo", self.model_type)
        policy = self._policy_class()(
            _observation_space(int(config["obs_dim"])), self._action_space(),
            lambda _progress: 0.0, net_arch=list(config["net_arch"]))
        policy.load_state_dict(state, strict=True)
        policy.set_training_mode(False)
        return {"policy": policy, "config": config}


class PPOPolicyTrainer(_Policy):
    """rl_v2: PPO over {short, flat, long}."""

    model_type = "rl_v2"
    specs = PPO_PARAMS
    discrete = True

    def _policy_class(self) -> Any:
        from stable_baselines3.common.policies import ActorCriticPolicy

        return ActorCriticPolicy

    def _learner(self, env: Any, p: Mapping[str, Any], seed: int, device: Any) -> Any:
        from stable_baselines3 import PPO

        return PPO("MlpPolicy", env, learning_rate=float(p["learning_rate"]),
                   n_steps=int(p["n_steps"]), batch_size=int(p["batch_size"]),
                   n_epochs=int(p["n_epochs"]), gamma=float(p["gamma"]),
                   ent_coef=float(p["ent_coef"]), seed=seed, device=device, verbose=0,
                   policy_kwargs={"net_arch": [int(p["hidden_size"])] * 2})


class SACPolicyTrainer(_Policy):
    """rl_v3: SAC over a continuous position in [-1, 1]."""

    model_type = "rl_v3"
    specs = SAC_PARAMS
    discrete = False

    def _policy_class(self) -> Any:
        from stable_baselines3.sac.policies import SACPolicy

        return SACPolicy

    def _learner(self, env: Any, p: Mapping[str, Any], seed: int, device: Any) -> Any:
        from stable_baselines3 import SAC

        return SAC("MlpPolicy", env, learning_rate=float(p["learning_rate"]),
                   buffer_size=max(int(p["total_timesteps"]), 1),
                   learning_starts=int(p["learning_starts"]), batch_size=int(p["batch_size"]),
                   tau=float(p["tau"]), gamma=float(p["gamma"]), seed=seed, device=device,
                   verbose=0, policy_kwargs={"net_arch": [int(p["hidden_size"])] * 2})
