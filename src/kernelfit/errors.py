"""Errors a user can act on. The CLI prints `kernelfit: error: <message>` on one line and
exits with code 2 for every `UsageError`; anything else is a bug and keeps its traceback."""

from __future__ import annotations

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input or an impossible request; the message says what to do."""

    exit_code = EXIT_USAGE


class PlanError(UsageError):
    """No configuration of this model can run on this machine; the message names the nearest way out."""


class HealthCheckError(RuntimeError):
    """A loaded model is not what its checkpoint describes (missing, random or unquantized weights,
    non-finite output). Raised instead of returning a silently broken model."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message + "".join(f"\n  - {p}" for p in problems))
        self.problems = problems
