"""Drop-folder feed: import the files put in a directory, each exactly once (no database).

Owns the folder's layout: new files in `DIR` are validated with `load_ohlcv` (the rules
of `clm data import`) and merged into the store; an imported file moves to
`DIR/imported/`, a refused one to `DIR/rejected/` next to `<name>.rejected`, a note
naming the line and the reason. A file is stored whole or not at all (validation first,
then one atomic merge), and a crash between the merge and the move only re-imports the
same bars next time (the merge is idempotent). Hidden files (`.name`) and names ending
in `.tmp`/`.part`/`.partial` are skipped: write a file elsewhere (or under such a name)
and rename it into the folder when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from app.ml.data.formats import SUPPORTED_SUFFIXES, DataValidationError
from app.ml.data.importer import load_ohlcv
from app.ml.data.store import MarketDataStore, SeriesMismatch

__all__ = ["IMPORTED", "REJECTED", "FolderPoll", "poll_folder"]

IMPORTED = "imported"
REJECTED = "rejected"
_IN_PROGRESS = (".tmp", ".part", ".partial", ".rejected")


@dataclass
class FolderPoll:
    """What one pass over the folder did."""

    imported: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # "name:line: reason"
    bars_added: int = 0
    last_bar: object | None = None  # pd.Timestamp of the newest bar stored by this pass

    @property
    def error(self) -> str | None:
        return "; ".join(self.rejected) if self.rejected else None


def pending_files(folder: Path) -> list[Path]:
    """Files waiting in `folder`, oldest name first (a name with a date sorts by it)."""
    out = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith(".") or not entry.is_file():
            continue
        if name.lower().endswith(_IN_PROGRESS):
            continue
        out.append(entry)
    return out


def poll_folder(folder: Path | str, store: MarketDataStore, symbol: str, timeframe: str
                ) -> FolderPoll:
    """Import every pending file of `folder` into `store` (symbol, timeframe)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    result = FolderPoll()
    for path in pending_files(root):
        reason: str | None = None
        line: int | None = None
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            reason, line = f"unsupported file type {path.suffix!r}", None
        else:
            try:
                loaded = load_ohlcv(path, timeframe)
                report = store.merge(symbol, timeframe, loaded.frame)
            except DataValidationError as exc:
                reason, line = exc.reason, exc.line
            except SeriesMismatch as exc:
                reason, line = exc.reason, int(loaded.source_lines[exc.row])
            else:
                result.bars_added += report.added
                result.last_bar = report.last
                _move(path, root / IMPORTED)
                result.imported.append(path.name)
                continue
        where = f"{path.name}:{line}" if line is not None else path.name
        moved = _move(path, root / REJECTED)
        note = moved.with_name(moved.name + ".rejected")
        note.write_text(f"{where}: {reason}\n")
        result.rejected.append(f"{where}: {reason}")
    return result


def _move(path: Path, into: Path) -> Path:
    """Move `path` into the folder `into`, never over an earlier file of the same name."""
    into.mkdir(exist_ok=True)
    target = into / path.name
    n = 1
    while target.exists():
        target = into / f"{path.stem}.{n}{path.suffix}"
        n += 1
    os.replace(path, target)
    return target
