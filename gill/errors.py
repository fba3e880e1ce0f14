"""Exception types with messages that teach: what was wrong, with which input, and how to fix it.

Every error can carry several ``problems`` so a user sees all of them at once instead of fixing one,
re-running, and meeting the next.
"""

from __future__ import annotations

from collections.abc import Iterable


class GillError(Exception):
    """Base class of the errors the ``gill`` command reports without a traceback."""

    exit_code = 1

    def __init__(self, message: str, problems: Iterable[str] = (), hint: str | None = None) -> None:
        self.message = message
        self.problems = list(problems)
        self.hint = hint
        super().__init__(self.render())

    def __reduce__(self) -> tuple[type, tuple[str, list[str], str | None]]:
        """Pickled with its parts (an error raised in a worker process keeps its problems and hint)."""
        return type(self), (self.message, self.problems, self.hint)

    def render(self) -> str:
        """The full message: headline, one line per problem, then the hint."""
        lines = [self.message + (":" if self.problems else "")]
        lines += [f"  - {p}" for p in self.problems]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


class ConfigError(GillError, ValueError):
    """A configuration value is invalid; each problem names its field path."""

    exit_code = 2


class InputError(GillError, ValueError):
    """A user-supplied file or argument is invalid; each problem names the input."""

    exit_code = 2


class MissingWeightsError(GillError, FileNotFoundError):
    """Backbone weights are not available locally (and downloads are off)."""

    exit_code = 3
