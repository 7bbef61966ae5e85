"""`clm demo` — README's first command — runs end to end on the embedded default.

A subprocess in an empty working directory with no CLM_* configuration, as a newcomer
runs it: real API, workers and beat processes, real training and a real strategy search.
Smaller than the default (3,000 bars) to keep the suite fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLM = Path(sys.executable).with_name("clm")


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_embedded_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLM_")}
    proc = subprocess.run([str(CLM), "demo", "--bars", "3000", "--span-days", "120"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # Planted series pass the gate, random walks fail it; nothing is promoted implicitly.
    assert re.search(r"xgboost_syn-planted_1h\s+job succeeded: version \S+ -> candidate", out)
    assert re.search(r"xgboost_syn-random_1h\s+job succeeded: version \S+ -> failed", out)
    assert "POST /clm/rollback xgboost_syn-planted_1h -> production is" in out
    # guarded deployment: a shadow leaves shadow, the allocation moves, the guard rolls back
    assert re.search(r"v\S+: shadow -> candidate on its live record", out)
    assert "clm version.shadow_exited" in out
    assert re.search(r"allocation \(thompson\): v\S+ 0\.\d+, v\S+ 0\.\d+", out)
    assert re.search(r"audit: clm version.rolled_back v\S+ — auto-rollback: production", out)
    # The strategy search ran both generations and reported its overfitting guard.
    assert "generation 1: " in out and "<- chosen" in out
    assert re.search(r"Deflated Sharpe Ratio [\d.]+ given 16 trials", out)
    assert "stopped 4 processes" in out
    # It ends with the web console's address and a viewer token to sign in with.
    last = proc.stdout.rstrip().splitlines()[-2:]
    assert last[0].endswith("http://localhost:8000/ui/")
    assert re.fullmatch(r"Sign in there with this viewer token: clm_\S+", last[1])
    # Everything it wrote is under ./var of the working directory.
    assert (tmp_path / "var" / "clm.db").exists() or any((tmp_path / "var").glob("*.db"))
