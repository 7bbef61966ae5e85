"""Every CLM_* setting, parsed once from the environment into a typed, frozen object.

Rules: a variable set to the empty string counts as unset; relative defaults live under
`./var/` of the working directory; bad values raise `ConfigError` naming the variable.
The two file roots (CLM_DATA_DIR, CLM_ARTIFACT_ROOT) are a local folder or an
`s3://bucket/prefix` (`S3Location`); app.core.objectstore opens either.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A CLM_* variable has a value that cannot be used."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name)
    return default if value is None else value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    value = _get(env, name)
    if value is None:
        return default
    try:
        parsed = int(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from exc
    if minimum is not None and parsed < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {parsed}")
    return parsed


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _get(env, name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _get(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0/true/false), got {value!r}")


def _json(env: Mapping[str, str], name: str, default: Any) -> Any:
    value = _get(env, name)
    if value is None:
        return default
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} must be JSON: {exc}") from exc


def normalize_database_url(url: str) -> str:
    """Accept plain `postgresql://` / `postgres://` and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class S3Location:
    """A file root in an S3-compatible object store: `s3://bucket/prefix`.

    `variable` is the setting it came from (named in every error about it);
    `endpoint_url` is CLM_S3_ENDPOINT_URL (None: boto3's own AWS_* configuration).
    Credentials never live here: boto3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    """

    bucket: str
    prefix: str  # no leading or trailing "/"; "" for the bucket's top
    variable: str
    endpoint_url: str | None = None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, relative: str) -> str:
        """The object key of `relative` (a "/"-separated key inside this root)."""
        return f"{self.prefix}/{relative}" if self.prefix else relative


StorageRoot = Path | S3Location


def parse_s3_url(value: str, variable: str, endpoint_url: str | None = None) -> S3Location:
    """`s3://bucket[/prefix]` → S3Location; ConfigError naming `variable` otherwise. The
    value is echoed only when it cannot hold a secret (no `user:pass@` part)."""
    rest = value[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket:
        raise ConfigError(f"{variable} must not carry credentials in the URL; set "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{variable} must be s3://BUCKET/PREFIX with a valid bucket name (3-63 "
            f"lowercase letters, digits, '.' or '-'), got {value!r}")
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or any(c in prefix for c in "?#\\\0"):
        raise ConfigError(
            f"{variable}: the prefix of {value!r} must be plain '/'-separated names "
            "(no empty, '.' or '..' part, no '?', '#' or backslash)")
    return S3Location(bucket, prefix, variable, endpoint_url)


def _endpoint(env: Mapping[str, str]) -> str | None:
    value = _get(env, "CLM_S3_ENDPOINT_URL")
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a non-numeric port
    except ValueError:
        parts, port = None, None
    if parts is not None and (parts.username or parts.password):
        raise ConfigError("CLM_S3_ENDPOINT_URL must not carry credentials; set "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.query or parts.fragment or (port is not None and port == 0)):
        raise ConfigError("CLM_S3_ENDPOINT_URL must be an http(s)://host[:port] URL of the "
                          f"S3-compatible service, got {value!r}")
    return value.rstrip("/")


def _storage_root(env: Mapping[str, str], name: str, default: Path,
                  endpoint_url: str | None) -> StorageRoot:
    """A local folder (resolved) or `s3://bucket/prefix`; another scheme is refused."""
    value = _get(env, name)
    if value is None:
        return default.resolve()
    if value[:5].lower() == "s3://":
        return parse_s3_url("s3://" + value[5:], name, endpoint_url)
    if _SCHEME_RE.match(value):
        scheme = value.split("://", 1)[0]
        raise ConfigError(f"{name} must be a local folder or s3://bucket/prefix; the "
                          f"scheme {scheme!r} is not supported")
    return Path(value).resolve()


# Seed defaults (EPIC-CLM3-001): hours between periodic retrainings per model type.
DEFAULT_RETRAIN_INTERVAL_HOURS: dict[str, float] = {
    "xgboost": 168,
    "lightgbm": 168,
    "nhits": 336,
    "patchtst": 336,
    "rl_v2": 24,
    "rl_v3": 24,
    "other": 168,
}

# Seed defaults for the promotion gate.
DEFAULT_GATE: dict[str, float] = {
    "min_sharpe": 1.0,
    "min_win_rate": 0.52,
    "min_profit_factor": 1.3,
    "max_drawdown": 0.15,
    "min_trades": 50,
}


@dataclass(frozen=True)
class Settings:
    """Typed view of the CLM_* environment. Build with `load_settings()`."""

    var_dir: Path
    database_url: str
    broker_url: str
    result_backend: str | None
    # A local folder (the default) or an S3Location (`s3://bucket/prefix`).
    data_dir: StorageRoot
    artifact_root: StorageRoot
    # auth / web
    auth_enabled: bool = True
    # Celery / workers
    worker_concurrency: int = 2
    task_soft_time_limit_s: int = 1800
    task_time_limit_s: int = 2100
    broker_visibility_timeout_s: int = 7200
    worker_max_tasks_per_child: int = 20
    worker_max_memory_per_child_kb: int = 2_000_000
    # SIGTERM: running tasks get this long to finish, then they are cancelled and their
    # work returned (broker redelivery / the reaper), so a stop never waits on a 30-min fit.
    worker_soft_shutdown_timeout_s: float = 30.0
    # jobs
    job_lease_seconds: int = 60
    job_max_attempts: int = 3
    reaper_interval_s: float = 15.0
    # ML / evaluation
    fee_bps: float = 5.0
    slippage_bps: float = 0.0
    walk_forward_folds: int = 3
    # Fewest training rows the first walk-forward fold may have (refused below this).
    min_train_rows: int = 200
    label_horizon: int = 1
    long_threshold: float = 0.55
    short_threshold: float = 0.45
    gate: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GATE))
    gate_overrides: dict[str, dict[str, float]] = field(default_factory=dict)
    champion_sharpe_margin: float = 0.0
    auto_promote_to_candidate: bool = True
    shadow_mode: bool = False
    # diagnostics of each version (issue 15): attributions, calibration, breakdowns; and
    # the opt-in causal calibration the thresholds then act on
    diagnostics: bool = True
    calibrate: bool = False
    # scheduler / triggers
    retrain_interval_hours: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_RETRAIN_INTERVAL_HOURS)
    )
    degraded_sharpe: float = 0.5
    trigger_cooldown_hours: float = 6.0
    drift_psi_threshold: float = 0.2
    drift_feature_share: float = 0.3
    scheduler_tick_s: float = 60.0
    # continuous learning (issue 5): checks, KS effect size, live-performance guard
    drift_ks_threshold: float = 0.1
    drift_check_interval_s: float = 3600.0
    performance_check_interval_s: float = 3600.0
    performance_min_trades: int = 20
    auto_rollback: bool = True
    auto_rollback_sharpe_floor: float = 0.5
    # guarded deployment on live records (issue 13): shadow exit, challenger test,
    # Thompson allocation, auto-rollback (app.services.deployment, app.services.allocation)
    shadow_min_trades: int = 100
    shadow_min_days: float = 7.0
    shadow_patience: float = 3.0
    challenger_confidence: float = 0.9
    challenger_bootstrap_reps: int = 1000
    auto_rollback_max_drawdown: float = 0.15
    auto_rollback_rearm_sharpe: float = 1.0
    auto_rollback_window_bars: int = 720
    auto_rollback_cooldown_hours: float = 24.0
    allocation_production_floor: float = 0.5
    allocation_newcomer_cap: float = 0.25
    allocation_max_step: float = 0.1
    allocation_window_bars: int = 720
    outbox_relay_interval_s: float = 5.0
    # strategy evolution (issue 7): NSGA-II search defaults, trial leases, variants
    evolution_population: int = 16
    evolution_generations: int = 4
    evolution_min_trades: int = 50
    evolution_holdout_fraction: float = 0.2
    evolution_mutation_magnitude: float = 0.2
    evolution_variants: int = 6
    evolution_trial_lease_s: float = 120.0
    evolution_requeue_after_s: float = 300.0
    evolution_collapse_ratio: float = 0.5
    evolution_auto_train_variants: bool = True
    evolution_preferences: dict[str, dict[str, float]] = field(default_factory=dict)
    # market data feeds (issue 12): beat tick, poll lease, Binance public klines
    feed_tick_s: float = 30.0
    feed_lease_s: float = 300.0
    feed_max_pages: int = 20
    # directories under which POST /clm/data/feeds may create drop folders (the CLI: any)
    feed_drop_roots: tuple[Path, ...] = ()
    binance_base_url: str = "https://api.binance.com"
    binance_max_retries: int = 5
    binance_max_wait_s: float = 60.0
    binance_timeout_s: float = 10.0
    # events
    events_exchange: str = "clm.events"
    # observability
    log_json: bool = True
    log_level: str = "INFO"

    def __hash__(self) -> int:
        # Frozen but holding dicts: hash the rendered values so Settings can key caches.
        return hash(repr(self))

    def gate_for(self, model_type: str) -> dict[str, float]:
        """Gate thresholds for a model type: global values with per-type overrides."""
        merged = dict(self.gate)
        merged.update(self.gate_overrides.get(model_type, {}))
        return merged

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse settings from `env` (default: os.environ). Never cached: see `get_settings`."""
    env = os.environ if env is None else env
    var_dir = Path(_str(env, "CLM_VAR_DIR", "var")).resolve()
    database_url = normalize_database_url(
        _str(env, "CLM_DATABASE_URL", f"sqlite:///{var_dir / 'clm.db'}")
    )
    gate = dict(DEFAULT_GATE)
    for key in DEFAULT_GATE:
        gate[key] = _float(env, f"CLM_GATE_{key.upper()}", DEFAULT_GATE[key])
    gate_overrides = _json(env, "CLM_GATE_OVERRIDES", {})
    if not isinstance(gate_overrides, dict):
        raise ConfigError("CLM_GATE_OVERRIDES must be a JSON object {model_type: {key: value}}")
    intervals = dict(DEFAULT_RETRAIN_INTERVAL_HOURS)
    extra_intervals = _json(env, "CLM_RETRAIN_INTERVAL_HOURS", {})
    if not isinstance(extra_intervals, dict):
        raise ConfigError("CLM_RETRAIN_INTERVAL_HOURS must be a JSON object {model_type: hours}")
    intervals.update({str(k): float(v) for k, v in extra_intervals.items()})
    endpoint_url = _endpoint(env)
    return Settings(
        var_dir=var_dir,
        database_url=database_url,
        broker_url=_str(env, "CLM_BROKER_URL", "filesystem://"),
        result_backend=_get(env, "CLM_RESULT_BACKEND"),
        data_dir=_storage_root(env, "CLM_DATA_DIR", var_dir / "data", endpoint_url),
        artifact_root=_storage_root(env, "CLM_ARTIFACT_ROOT", var_dir / "artifacts",
                                    endpoint_url),
        auth_enabled=_bool(env, "CLM_AUTH_ENABLED", True),
        worker_concurrency=_int(env, "CLM_WORKER_CONCURRENCY", 2, minimum=1),
        task_soft_time_limit_s=_int(env, "CLM_TASK_SOFT_TIME_LIMIT_S", 1800, minimum=1),
        task_time_limit_s=_int(env, "CLM_TASK_TIME_LIMIT_S", 2100, minimum=1),
        broker_visibility_timeout_s=_int(env, "CLM_BROKER_VISIBILITY_TIMEOUT_S", 7200, minimum=60),
        worker_max_tasks_per_child=_int(env, "CLM_WORKER_MAX_TASKS_PER_CHILD", 20, minimum=1),
        worker_max_memory_per_child_kb=_int(
            env, "CLM_WORKER_MAX_MEMORY_PER_CHILD_KB", 2_000_000, minimum=10_000
        ),
        worker_soft_shutdown_timeout_s=_float(env, "CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S", 30.0),
        job_lease_seconds=_int(env, "CLM_JOB_LEASE_SECONDS", 60, minimum=2),
        job_max_attempts=_int(env, "CLM_JOB_MAX_ATTEMPTS", 3, minimum=1),
        reaper_interval_s=_float(env, "CLM_REAPER_INTERVAL_S", 15.0),
        fee_bps=_float(env, "CLM_FEE_BPS", 5.0),
        slippage_bps=_float(env, "CLM_SLIPPAGE_BPS", 0.0),
        walk_forward_folds=_int(env, "CLM_WALK_FORWARD_FOLDS", 3, minimum=2),
        min_train_rows=_int(env, "CLM_MIN_TRAIN_ROWS", 200, minimum=20),
        label_horizon=_int(env, "CLM_LABEL_HORIZON", 1, minimum=1),
        long_threshold=_float(env, "CLM_LONG_THRESHOLD", 0.55),
        short_threshold=_float(env, "CLM_SHORT_THRESHOLD", 0.45),
        gate=gate,
        gate_overrides={str(k): dict(v) for k, v in gate_overrides.items()},
        champion_sharpe_margin=_float(env, "CLM_CHAMPION_SHARPE_MARGIN", 0.0),
        auto_promote_to_candidate=_bool(env, "CLM_AUTO_PROMOTE_TO_CANDIDATE", True),
        shadow_mode=_bool(env, "CLM_SHADOW_MODE", False),
        diagnostics=_bool(env, "CLM_DIAGNOSTICS", True),
        calibrate=_bool(env, "CLM_CALIBRATE", False),
        retrain_interval_hours=intervals,
        degraded_sharpe=_float(env, "CLM_DEGRADED_SHARPE", 0.5),
        trigger_cooldown_hours=_float(env, "CLM_TRIGGER_COOLDOWN_HOURS", 6.0),
        drift_psi_threshold=_float(env, "CLM_DRIFT_PSI_THRESHOLD", 0.2),
        drift_feature_share=_float(env, "CLM_DRIFT_FEATURE_SHARE", 0.3),
        scheduler_tick_s=_float(env, "CLM_SCHEDULER_TICK_S", 60.0),
        drift_ks_threshold=_float(env, "CLM_DRIFT_KS_THRESHOLD", 0.1),
        drift_check_interval_s=_float(env, "CLM_DRIFT_CHECK_INTERVAL_S", 3600.0),
        performance_check_interval_s=_float(env, "CLM_PERFORMANCE_CHECK_INTERVAL_S", 3600.0),
        performance_min_trades=_int(env, "CLM_PERFORMANCE_MIN_TRADES", 20, minimum=1),
        auto_rollback=_bool(env, "CLM_AUTO_ROLLBACK", True),
        auto_rollback_sharpe_floor=_float(env, "CLM_AUTO_ROLLBACK_SHARPE_FLOOR", 0.5),
        shadow_min_trades=_int(env, "CLM_SHADOW_MIN_TRADES", 100, minimum=1),
        shadow_min_days=_float(env, "CLM_SHADOW_MIN_DAYS", 7.0),
        shadow_patience=max(1.0, _float(env, "CLM_SHADOW_PATIENCE", 3.0)),
        challenger_confidence=min(0.999, max(0.5, _float(env, "CLM_CHALLENGER_CONFIDENCE",
                                                         0.9))),
        challenger_bootstrap_reps=_int(env, "CLM_CHALLENGER_BOOTSTRAP_REPS", 1000, minimum=100),
        auto_rollback_max_drawdown=_float(env, "CLM_AUTO_ROLLBACK_MAX_DRAWDOWN", 0.15),
        auto_rollback_rearm_sharpe=_float(env, "CLM_AUTO_ROLLBACK_REARM_SHARPE", 1.0),
        auto_rollback_window_bars=_int(env, "CLM_AUTO_ROLLBACK_WINDOW_BARS", 720, minimum=10),
        auto_rollback_cooldown_hours=_float(env, "CLM_AUTO_ROLLBACK_COOLDOWN_HOURS", 24.0),
        allocation_production_floor=min(1.0, max(0.0, _float(
            env, "CLM_ALLOCATION_PRODUCTION_FLOOR", 0.5))),
        allocation_newcomer_cap=min(1.0, max(0.0, _float(env, "CLM_ALLOCATION_NEWCOMER_CAP",
                                                         0.25))),
        allocation_max_step=min(1.0, max(0.001, _float(env, "CLM_ALLOCATION_MAX_STEP", 0.1))),
        allocation_window_bars=_int(env, "CLM_ALLOCATION_WINDOW_BARS", 720, minimum=10),
        outbox_relay_interval_s=_float(env, "CLM_OUTBOX_RELAY_INTERVAL_S", 5.0),
        evolution_population=_int(env, "CLM_EVOLUTION_POPULATION", 16, minimum=2),
        evolution_generations=_int(env, "CLM_EVOLUTION_GENERATIONS", 4, minimum=1),
        evolution_min_trades=_int(env, "CLM_EVOLUTION_MIN_TRADES", 50, minimum=0),
        evolution_holdout_fraction=_float(env, "CLM_EVOLUTION_HOLDOUT_FRACTION", 0.2),
        evolution_mutation_magnitude=_float(env, "CLM_EVOLUTION_MUTATION_MAGNITUDE", 0.2),
        evolution_variants=_int(env, "CLM_EVOLUTION_VARIANTS", 6, minimum=2),
        evolution_trial_lease_s=_float(env, "CLM_EVOLUTION_TRIAL_LEASE_S", 120.0),
        evolution_requeue_after_s=_float(env, "CLM_EVOLUTION_REQUEUE_AFTER_S", 300.0),
        evolution_collapse_ratio=_float(env, "CLM_EVOLUTION_COLLAPSE_RATIO", 0.5),
        evolution_auto_train_variants=_bool(env, "CLM_EVOLUTION_AUTO_TRAIN_VARIANTS", True),
        evolution_preferences=_json(env, "CLM_EVOLUTION_PREFERENCES", {}),
        feed_tick_s=_float(env, "CLM_FEED_TICK_S", 30.0),
        feed_lease_s=_float(env, "CLM_FEED_LEASE_S", 300.0),
        feed_max_pages=_int(env, "CLM_FEED_MAX_PAGES", 20, minimum=1),
        feed_drop_roots=tuple(
            Path(p).expanduser().resolve()
            for p in _str(env, "CLM_FEED_DROP_ROOTS", str(var_dir / "drop")).split(os.pathsep)
            if p.strip()),
        binance_base_url=_str(env, "CLM_BINANCE_BASE_URL", "https://api.binance.com").rstrip("/"),
        binance_max_retries=_int(env, "CLM_BINANCE_MAX_RETRIES", 5, minimum=0),
        binance_max_wait_s=_float(env, "CLM_BINANCE_MAX_WAIT_S", 60.0),
        binance_timeout_s=_float(env, "CLM_BINANCE_TIMEOUT_S", 10.0),
        events_exchange=_str(env, "CLM_EVENTS_EXCHANGE", "clm.events"),
        log_json=_bool(env, "CLM_LOG_JSON", True),
        log_level=_str(env, "CLM_LOG_LEVEL", "INFO").upper(),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, parsed once. Tests call `get_settings.cache_clear()`."""
    return load_settings()


SETTING_NAMES = [f.name for f in fields(Settings)]
