"""Domain vocabulary shared by every module: timeframes, enums, model ids, symbols.

Owns the contract's closed value sets (model types, statuses, trigger reasons,
timeframes) and the tiny helpers built on them. Deliberately imports only the
standard library so that anything (CLI, workers, API) can import it cheaply.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "MODEL_ID_RE",
    "REGIME_PATTERN",
    "REGIME_RE",
    "SYMBOL_PATTERN",
    "TIMEFRAMES",
    "JobStatus",
    "ModelStatus",
    "ModelType",
    "Timeframe",
    "TriggerReason",
    "is_model_id",
    "is_regime",
    "make_model_id",
    "normalize_symbol",
    "split_model_id",
    "timeframe_seconds",
]

# Bar length in seconds for every timeframe the contract allows (insertion order = ascending).
TIMEFRAMES: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "4h": 14400,
    "1d": 86400,
}


class Timeframe(enum.StrEnum):
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"


class ModelType(enum.StrEnum):
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"
    NHITS = "nhits"
    PATCHTST = "patchtst"
    RL_V2 = "rl_v2"
    RL_V3 = "rl_v3"
    OTHER = "other"


class ModelStatus(enum.StrEnum):
    TRAINING = "training"
    SHADOW = "shadow"
    CANDIDATE = "candidate"
    PRODUCTION = "production"
    RETIRED = "retired"
    FAILED = "failed"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class TriggerReason(enum.StrEnum):
    PERIODIC = "periodic"
    DRIFT_DETECTED = "drift_detected"
    PERFORMANCE_DEGRADED = "performance_degraded"
    REGIME_CHANGE = "regime_change"
    MANUAL = "manual"


def timeframe_seconds(tf: str) -> int:
    """Bar length of timeframe ``tf`` in seconds; ValueError naming the allowed values."""
    try:
        return TIMEFRAMES[str(tf)]
    except KeyError:
        allowed = ", ".join(TIMEFRAMES)
        raise ValueError(f"unknown timeframe {tf!r}; allowed: {allowed}") from None


# The one symbol rule. A symbol names a folder of the market data store, so it starts
# with a letter or digit: `.` and `..` (and hidden `.X` folders) can never be one.
SYMBOL_PATTERN = r"^[A-Z0-9][A-Z0-9._-]{0,29}$"
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)


def normalize_symbol(s: str) -> str:
    """Upper-case ``s`` and check it is 1-30 chars of [A-Z0-9._-] starting with a letter
    or digit; ValueError otherwise.

    Surrounding whitespace is stripped (a pasted symbol often carries it); inner
    characters are never rewritten, so a bad symbol is refused rather than mangled. The
    first-character rule makes every symbol a plain folder name: never `.`, `..` or a
    hidden folder, whatever else the character set allows.
    """
    if not isinstance(s, str):
        raise ValueError(f"symbol must be a string, got {type(s).__name__}")
    sym = s.strip().upper()
    if not _SYMBOL_RE.fullmatch(sym):
        raise ValueError(
            f"invalid symbol {s!r}: must be 1-30 characters of A-Z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return sym


def make_model_id(model_type: str, symbol: str, timeframe: str) -> str:
    """Contract model id: ``f"{model_type}_{symbol.lower()}_{timeframe}"``.

    ``model_type`` and ``timeframe`` are checked against the closed sets so a typo
    cannot mint an id that no other component will ever look up.
    """
    mt = ModelType(str(model_type)).value
    timeframe_seconds(timeframe)
    return f"{mt}_{normalize_symbol(symbol).lower()}_{timeframe}"


# The one model-id rule: `{model_type}_{symbol}_{timeframe}` (types longest first, so
# `rl_v2_...` is not read as type `rl`).
MODEL_ID_RE = re.compile(
    "^(?P<type>{types})_(?P<symbol>[a-z0-9][a-z0-9._-]{{0,29}})_(?P<tf>{tfs})$".format(
        types="|".join(sorted((t.value for t in ModelType), key=len, reverse=True)),
        tfs="|".join(re.escape(tf) for tf in TIMEFRAMES),
    )
)

# The one regime-label rule (registry tags, jobs, events, API bodies and queries).
REGIME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,39}$"
REGIME_RE = re.compile(REGIME_PATTERN)


def is_model_id(model_id: object) -> bool:
    """True when `model_id` has the contract's shape `{model_type}_{symbol}_{timeframe}`."""
    return isinstance(model_id, str) and MODEL_ID_RE.fullmatch(model_id) is not None


def split_model_id(model_id: object) -> tuple[str, str, str] | None:
    """(model_type, SYMBOL, timeframe) of a contract model id, None when it cannot be one."""
    m = MODEL_ID_RE.fullmatch(model_id) if isinstance(model_id, str) else None
    if m is None:
        return None
    return m.group("type"), m.group("symbol").upper(), m.group("tf")


def is_regime(value: object) -> bool:
    """True when `value` (case and surrounding blanks aside) is a valid regime label."""
    return isinstance(value, str) and REGIME_RE.fullmatch(value.strip().lower()) is not None
