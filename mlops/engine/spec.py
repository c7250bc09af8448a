"""Training configuration shared by the engine and the Django side."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

TASKS = ("binary", "multiclass")
ACTIVATIONS = ("relu", "tanh", "gelu")
OPTIMIZERS = ("sgd", "adam")
ACCOUNTANTS = ("rdp", "prv")
# A network wider or deeper than this is not a tabular MLP any more and would only
# exhaust the worker's memory; refusing it early keeps the error a 400, not a crash.
MAX_HIDDEN_WIDTH = 8192
MAX_HIDDEN_LAYERS = 16


def _default_hidden_sizes() -> list[int]:
    return [64]


@dataclass
class TrainConfig:
    task: str = "binary"
    hidden_sizes: list[int] = field(default_factory=_default_hidden_sizes)
    activation: str = "relu"
    dropout: float = 0.0
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    epochs: int = 5
    # Expected batch size: Poisson sampling includes every example independently with
    # probability sample_rate = batch_size / N, so actual batches vary around it.
    batch_size: int = 256
    seed: int = 0
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    target_delta: float = 1e-5
    accountant: str = "rdp"
    private: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from JSON-like data; unknown keys are refused so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown training option")
        values = dict(data)
        if "hidden_sizes" in values and values["hidden_sizes"] is not None:
            try:
                values["hidden_sizes"] = list(values["hidden_sizes"])
            except TypeError:
                raise ValueError("hidden_sizes: must be a list of positive integers")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        return data

    def sample_rate(self, n_train: int) -> float:
        return self.batch_size / n_train

    def steps_per_epoch(self, n_train: int) -> int:
        # Opacus's DPDataLoader runs int(1 / sample_rate) Poisson batches per epoch.
        return max(1, int(n_train / self.batch_size))

    def total_steps(self, n_train: int) -> int:
        return self.epochs * self.steps_per_epoch(n_train)

    def validate(self, n_train: int) -> None:
        """Refuse a configuration that cannot train or would not give the promised guarantee.

        Raises ``ValueError("<field>: <reason>")`` so callers can name the field in a 400.
        """
        if self.task not in TASKS:
            raise ValueError(f"task: must be one of {', '.join(TASKS)}")
        if not isinstance(self.hidden_sizes, list | tuple):
            raise ValueError("hidden_sizes: must be a list of positive integers")
        if len(self.hidden_sizes) > MAX_HIDDEN_LAYERS:
            raise ValueError(f"hidden_sizes: at most {MAX_HIDDEN_LAYERS} hidden layers")
        for width in self.hidden_sizes:
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError("hidden_sizes: must be a list of positive integers")
            if width > MAX_HIDDEN_WIDTH:
                raise ValueError(f"hidden_sizes: a layer may have at most {MAX_HIDDEN_WIDTH} units")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: must be one of {', '.join(ACTIVATIONS)}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout: must be at least 0 and below 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: must be one of {', '.join(OPTIMIZERS)}")
        if not _is_number(self.learning_rate) or not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ValueError("learning_rate: must be a positive number")
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ValueError("epochs: must be a positive integer")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError("seed: must be a non-negative integer")
        if not _is_int(n_train) or n_train < 1:
            raise ValueError("n_train: the training set is empty")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError("batch_size: must be a positive integer")
        if self.batch_size > n_train:
            raise ValueError(f"batch_size: must not exceed the {n_train} training examples")
        if not self.private:
            return
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}")
        if not _is_number(self.max_grad_norm) or not self.max_grad_norm > 0 or not math.isfinite(self.max_grad_norm):
            raise ValueError("max_grad_norm: must be a positive number")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("target_epsilon: give exactly one of target_epsilon and noise_multiplier")
        if self.target_epsilon is not None and (
            not _is_number(self.target_epsilon) or not self.target_epsilon > 0 or not math.isfinite(self.target_epsilon)
        ):
            raise ValueError("target_epsilon: must be a positive number")
        if self.noise_multiplier is not None and (
            not _is_number(self.noise_multiplier)
            or not self.noise_multiplier > 0
            or not math.isfinite(self.noise_multiplier)
        ):
            raise ValueError("noise_multiplier: must be a positive number")
        if not _is_number(self.target_delta) or not self.target_delta > 0:
            raise ValueError("target_delta: must be a positive number")
        # δ at or above 1/N allows releasing one person's record outright and still
        # calling it (ε, δ)-DP, so the guarantee would be meaningless.
        if self.target_delta >= 1.0 / n_train:
            raise ValueError(f"target_delta: must be below 1/N = {1.0 / n_train:.3g} for N = {n_train}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
