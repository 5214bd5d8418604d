"""Configuration diagnostics: what went wrong, where (file and line).

Every problem found in a configuration becomes a Diagnostic; parsing collects
them and raises one ConfigError carrying all of them (vmd reports each error
and then fails).  Validators raise InvalidValue, which has no location: the
parser adds the location, the privileged daemon adds its own context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning at a place in a configuration file.

    line is 0 when the problem concerns the file as a whole (cannot open it).
    """

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid.

    errors holds every problem found, in the order found; file, line and
    message repeat the first one for callers that report only one.
    """

    def __init__(self, errors: Sequence[Diagnostic]) -> None:
        if not errors:
            raise ValueError("ConfigError needs at least one diagnostic")
        self.errors: tuple[Diagnostic, ...] = tuple(errors)
        first = self.errors[0]
        self.file = first.file
        self.line = first.line
        self.message = first.message
        more = len(self.errors) - 1
        text = str(first) if more == 0 else f"{first} (and {more} more)"
        super().__init__(text)


class InvalidValue(ValueError):
    """A value failed validation; the message says why, without a location."""
