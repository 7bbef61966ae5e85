"""Strategy search settings: `EvolutionConfig` (the CLM_EVOLUTION_* variables) and the
hard limits of a search request (`MAX_POPULATION`, `MAX_GENERATIONS`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.config import Settings

__all__ = ["MAX_GENERATIONS", "MAX_POPULATION", "EvolutionConfig"]

MAX_POPULATION = 256
MAX_GENERATIONS = 100


@dataclass(frozen=True)
class EvolutionConfig:
    """Search defaults from Settings (CLM_EVOLUTION_* variables)."""

    population: int = 16
    generations: int = 4
    min_trades: int = 50
    holdout_fraction: float = 0.2
    mutation_magnitude: float = 0.2
    variants: int = 6
    trial_lease_s: float = 120.0
    requeue_after_s: float = 300.0
    collapse_ratio: float = 0.5
    max_attempts: int = 3
    auto_train_variants: bool = True
    preferences: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> EvolutionConfig:
        values: dict[str, Any] = {
            name: getattr(settings, f"evolution_{name}")
            for name in ("population", "generations", "min_trades", "holdout_fraction",
                         "mutation_magnitude", "variants", "trial_lease_s", "requeue_after_s",
                         "collapse_ratio", "auto_train_variants", "preferences")}
        values["max_attempts"] = settings.job_max_attempts
        return cls(**values)
