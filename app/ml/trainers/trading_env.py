"""The gymnasium trading environment the RL policies learn in.

Owns `TradingEnv`. One step is one bar: the agent sees the row's causal features
(standardized with the training rows' moments), chooses a position p_t in [-1, 1] at the
bar's close, and is paid the per-bar net return of DESIGN.md's backtest model,
p_t · (P_{t+1}/P_t − 1) − f · |p_t − p_{t−1}| (f = fee + slippage per side), scaled by
the training returns' std so rewards are O(1) whatever the instrument's volatility.
Episodes are `episode_bars` consecutive training rows from a seeded random start.
The next bar's return comes from the next row's `lag_1`: the environment never reads a
row beyond those it was built from.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["TradingEnv", "positions_of"]


def positions_of(actions: Any, discrete: bool) -> np.ndarray:
    """Positions in [-1, 1] from actions: Discrete(3) {0, 1, 2} → {−1, 0, +1}; a Box
    action is the position itself (clipped)."""
    a = np.asarray(actions, dtype=np.float64).reshape(-1)
    return a - 1.0 if discrete else np.clip(a, -1.0, 1.0)


class TradingEnv(gym.Env):
    """Bars as steps; the action is the position held into the next bar."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, observations: np.ndarray, next_returns: np.ndarray, *, cost: float,
                 episode_bars: int, discrete: bool) -> None:
        super().__init__()
        if len(observations) != len(next_returns) or len(observations) < 2:
            raise ValueError("observations and next returns must align, with >= 2 rows")
        self.obs = np.ascontiguousarray(observations, dtype=np.float32)
        self.ret = np.asarray(next_returns, dtype=np.float64)
        self.cost = float(cost)
        self.scale = 1.0 / (float(self.ret.std()) or 1.0)
        self.episode_bars = int(min(episode_bars, len(self.obs)))
        self.discrete = discrete
        dim = self.obs.shape[1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        self.action_space = (gym.spaces.Discrete(3) if discrete else
                             gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32))
        self._t = 0
        self._end = 0
        self._position = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        last_start = len(self.obs) - self.episode_bars
        self._t = int(self.np_random.integers(0, last_start + 1))
        self._end = self._t + self.episode_bars
        self._position = 0.0
        return self.obs[self._t], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        p = float(positions_of(action, self.discrete)[0])
        net = p * self.ret[self._t] - self.cost * abs(p - self._position)
        self._position = p
        self._t += 1
        done = self._t >= self._end
        obs = self.obs[min(self._t, len(self.obs) - 1)]
        return obs, float(net * self.scale), done, False, {"net_return": net}
