"""The distributed scenarios' fixtures: one lab of namespace hosts for the session, and the
figures each scenario reports (printed in pytest's summary)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.distributed.cluster import Cluster, cluster
from tests.support.netns import require_netns

FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if FIGURES:
        terminalreporter.section("distributed scenarios: figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def report(line: str) -> None:
    """A scenario's figures: printed now and in the summary."""
    print(line, flush=True)
    FIGURES.append(line)


@pytest.fixture(scope="session")
def lab_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_netns()
    root = Path(tmp_path_factory.mktemp("lab"))
    with cluster(root) as c:
        yield c
