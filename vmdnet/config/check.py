"""vmdnetd -n: check a configuration file and print it normalized.

As vmd -n: on success the canonical configuration goes to stdout and
"configuration OK" to stderr (exit 0); on failure each error goes to stderr
as file:line: message (exit 1). Warnings (unused macros, rounded sizes) go
to stderr either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from vmdnet.config.errors import ConfigError
from vmdnet.config.limits import DEFAULT_CONFIG_PATH
from vmdnet.config.normalize import normalize
from vmdnet.config.parser import parse_file

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


class _ArgumentError(Exception):
    pass


class _Arguments(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _ArgumentError(message)


def _arguments() -> argparse.ArgumentParser:
    ap = _Arguments(prog="vmdnetd", add_help=False)
    ap.add_argument("-n", action="store_true", help="check the configuration only")
    ap.add_argument("-f", dest="file", default=DEFAULT_CONFIG_PATH, help="configuration file")
    ap.add_argument("-D", dest="macros", action="append", default=[], metavar="macro=value")
    return ap


def _macros(defs: list[str]) -> dict[str, str]:
    out = {}
    for item in defs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _ArgumentError(f"invalid macro definition: {item}")
        out[name] = value
    return out


def check_main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run "vmdnetd -n [-D macro=value] [-f file]" and return the exit status.

    argv excludes the program name; None means sys.argv[1:].
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        args = _arguments().parse_args(list(sys.argv[1:] if argv is None else argv))
        macros = _macros(args.macros)
    except _ArgumentError as exc:
        err.write(f"vmdnetd: {exc}\nusage: vmdnetd -n [-D macro=value] [-f file]\n")
        return EXIT_USAGE
    try:
        config = parse_file(args.file, macros)
    except ConfigError as exc:
        for diag in exc.errors:
            err.write(f"{diag}\n")
        return EXIT_INVALID
    for warning in config.warnings:
        err.write(f"{warning}\n")
    out.write(normalize(config))
    err.write("configuration OK\n")
    return EXIT_OK
