"""The baseline of `bench/bench_backtest.py --only cli`: backtesting.py, whole process.

Run: python bench/backtestingpy_follow.py PRICES.csv POSITIONS.csv [FEE_BPS]
Reads the same two files `clm backtest` reads (with pandas' fastest CSV engine,
pyarrow) and follows the target positions with backtesting.py (the position is set at
each bar's close, `trade_on_close=True`; a change of sign or size closes the trade and
opens the next), then prints its statistics. Needs the optional `backtesting` package
(`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import sys

import pandas as pd
from backtesting import Backtest, Strategy


def read(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path, engine="pyarrow")
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("timestamp"), utc=True))
    return frame


class FollowPositions(Strategy):
    """Hold `data.Pos` (in [-1, 1], a fraction of equity) from each bar's close."""

    def init(self) -> None:
        self.current = 0.0

    def next(self) -> None:
        target = float(self.data.Pos[-1])
        if target == self.current:
            return
        self.position.close()
        size = min(abs(target), 0.9999)  # backtesting.py: a fraction must be < 1
        if target > 0:
            self.buy(size=size)
        elif target < 0:
            self.sell(size=size)
        self.current = target


def main() -> None:
    prices, positions = read(sys.argv[1]), read(sys.argv[2])
    fee = float(sys.argv[3]) / 1e4 if len(sys.argv) > 3 else 0.0
    data = prices.rename(columns=str.capitalize)
    data["Pos"] = positions["position"].to_numpy()
    stats = Backtest(data, FollowPositions, cash=1_000_000, commission=fee,
                     trade_on_close=True, finalize_trades=True).run()
    keys = ["Sharpe Ratio", "Win Rate [%]", "Profit Factor", "Max. Drawdown [%]",
            "# Trades", "Return [%]"]
    print(stats[keys].to_string())


if __name__ == "__main__":
    main()
