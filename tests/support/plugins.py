"""The example plug-in package (examples/clm-sklearn-plugin), installed for real.

`install_example_plugin()` pip-installs it into the running interpreter's environment
(no dependencies: scikit-learn is already there through the test extra) so that worker
processes started afterwards find its `clm.trainers` entry point, and makes it
importable in this process too (an editable install's path hook only loads at start-up).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "clm-sklearn-plugin"
PLUGIN_NAME = "sklearn_logreg"


def install_example_plugin() -> None:
    from app.ml.trainers import available_trainers, refresh_trainers

    refresh_trainers()
    if PLUGIN_NAME not in available_trainers():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", str(PLUGIN_DIR)], check=True)
    importlib.invalidate_caches()
    refresh_trainers()
    assert PLUGIN_NAME in available_trainers(), "the example plug-in did not register"
