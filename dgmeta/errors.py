"""User-facing errors.

Anything a user can get wrong raises :class:`DgmetaError`; the CLI prints it as one line
(``error: <what> — <how to fix>``) and exits non-zero, without a traceback.
"""

from __future__ import annotations


class DgmetaError(Exception):
    """A mistake in user input or environment, with the fix in ``hint``."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f" — {self.hint.rstrip('.')}"
        return " ".join(text.split())

    def __str__(self) -> str:
        return self.one_line()


class DataError(DgmetaError):
    """Dataset missing, malformed, or inconsistent with its split lists."""


class ConfigError(DgmetaError):
    """Invalid option, hyperparameter or pipeline spec."""


class WeightsError(DgmetaError):
    """Pretrained weights unavailable or incompatible with the backbone."""


class TrackingError(DgmetaError):
    """The MLflow tracking store is unreachable or unwritable."""


class TrainingError(DgmetaError):
    """Training diverged (non-finite loss) or was stopped."""

    exit_code = 3
