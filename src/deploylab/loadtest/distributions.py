"""Value distributions used by scenarios (token lengths, think times) and Zipf popularity.

Each distribution is a pydantic model tagged by `dist`; a bare number in YAML means `fixed`.
`sample` returns floats; `sample_int` rounds and clips to at least `floor`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(default=None, description="clip samples below this")
    max: float | None = Field(default=None, description="clip samples above this")

    def _raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` samples as floats, clipped to [min, max]."""
        values = self._raw(rng, n).astype(float)
        if self.min is not None or self.max is not None:
            values = np.clip(values, self.min, self.max)
        return values

    def sample_int(self, rng: np.random.Generator, n: int, floor: int = 1) -> np.ndarray:
        """`n` samples rounded to integers and clipped to at least `floor`."""
        return np.maximum(np.rint(self.sample(rng, n)).astype(np.int64), floor)

    def one_int(self, rng: np.random.Generator, floor: int = 1) -> int:
        """One integer sample."""
        return int(self.sample_int(rng, 1, floor)[0])

    def one(self, rng: np.random.Generator) -> float:
        """One float sample."""
        return float(self.sample(rng, 1)[0])

    @property
    def mean(self) -> float:
        """The mean before clipping."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _check_bounds(self) -> _Dist:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class Fixed(_Dist):
    """Always `value`."""

    dist: Literal["fixed"] = "fixed"
    value: float = Field(ge=0)

    def _raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value)

    @property
    def mean(self) -> float:
        return self.value


class Uniform(_Dist):
    """Uniform on [min, max] (for token counts: every integer in the range equally likely)."""

    dist: Literal["uniform"]
    min: float = Field(ge=0)
    max: float = Field(ge=0)

    def _raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.min, self.max, n)

    def sample_int(self, rng: np.random.Generator, n: int, floor: int = 1) -> np.ndarray:
        lo, hi = math.ceil(self.min), math.floor(self.max)
        if lo > hi:
            return super().sample_int(rng, n, floor)
        return np.maximum(rng.integers(lo, hi + 1, n), floor)

    @property
    def mean(self) -> float:
        return (self.min + self.max) / 2


class Normal(_Dist):
    """Normal with `mean` and standard deviation `std`."""

    dist: Literal["normal"]
    mean_: float = Field(alias="mean")
    std: float = Field(ge=0)

    def _raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.normal(self.mean_, self.std, n)

    @property
    def mean(self) -> float:
        return self.mean_


class LogNormal(_Dist):
    """Log-normal with the given arithmetic `mean` and log-space standard deviation `sigma`."""

    dist: Literal["lognormal"]
    mean_: float = Field(alias="mean", gt=0)
    sigma: float = Field(ge=0)

    @property
    def mu(self) -> float:
        """Log-space mean: mean = exp(mu + sigma^2 / 2)."""
        return math.log(self.mean_) - self.sigma**2 / 2

    def _raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(self.mu, self.sigma, n)

    @property
    def mean(self) -> float:
        return self.mean_


class Exponential(_Dist):
    """Exponential with the given `mean` (e.g. think times)."""

    dist: Literal["exponential"]
    mean_: float = Field(alias="mean", gt=0)

    def _raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_, n)

    @property
    def mean(self) -> float:
        return self.mean_


def _bare_number_is_fixed(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"dist": "fixed", "value": value}
    if isinstance(value, dict) and "dist" not in value and "value" in value:
        return {"dist": "fixed", **value}
    return value


Distribution = Annotated[
    Fixed | Uniform | Normal | LogNormal | Exponential,
    Field(discriminator="dist"),
    BeforeValidator(_bare_number_is_fixed),
]


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Popularity of items ranked 1..n: proportional to 1 / rank**exponent, summing to 1."""
    ranks = np.arange(1, n + 1, dtype=float)
    weights = ranks ** (-exponent)
    return weights / weights.sum()
