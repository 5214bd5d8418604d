"""vmdnetctl [-o table|json|yaml] [-s socket] command [arg ...]

Commands (as vmctl(8) names them):
    status [name]               the VMs: id, VMM pid, memory, state, owner, interfaces
    show interfaces [name]      per interface: tap, vionet, offloads, counters, drops
    start name | stop name      start or stop a VM (root)
    reload                      re-read the configuration (root)
    log verbose | log brief     the daemon's (and its vionets') log level (root)
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from typing import TextIO

from vmdnet.cli.format import FORMATS, render
from vmdnet.privsep.control import (
    DEFAULT_SOCKET,
    LOG_ARGS,
    MAX_ANSWER,
    ControlError,
    Request,
    decode_answer,
    encode_request,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# The daemon answers at once except show interfaces, which asks every vionet
# (each has 2 s): a minute covers a host with many interfaces.
ANSWER_TIMEOUT_S = 60.0
USAGE = ("usage: vmdnetctl [-o table|json|yaml] [-s socket] command [arg ...]\n"
         "commands: status [name] | show interfaces [name] | start name | stop name |\n"
         "          reload | log verbose|brief\n")


class UsageError(Exception):
    pass


def parse_command(words: list[str]) -> Request:
    """The words after the options -> a Request (vmctl-style, with unique prefixes)."""
    if not words:
        raise UsageError("no command")
    cmd, rest = words[0], words[1:]
    if cmd == "show":
        if not rest or rest[0] != "interfaces":
            raise UsageError("show what? (show interfaces [name])")
        cmd, rest = "show-interfaces", rest[1:]
    if cmd in ("status", "show-interfaces"):
        if len(rest) > 1:
            raise UsageError(f"{cmd} takes at most one name")
        return Request(cmd, rest[0] if rest else None)
    if cmd in ("start", "stop"):
        if len(rest) != 1:
            raise UsageError(f"{cmd} takes one name")
        return Request(cmd, rest[0])
    if cmd == "reload":
        if rest:
            raise UsageError("reload takes no arguments")
        return Request("reload")
    if cmd == "log":
        if len(rest) != 1 or rest[0] not in LOG_ARGS:
            raise UsageError("log verbose | log brief")
        return Request("log", arg=rest[0])
    raise UsageError(f"unknown command {cmd!r}")


def ask(path: str, req: Request, timeout: float = ANSWER_TIMEOUT_S) -> object:
    """Send REQ to the daemon at PATH; its result (ControlError if it refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(encode_request(req))
        s.shutdown(socket.SHUT_WR)
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
            if len(data) > MAX_ANSWER:
                raise ControlError(f"answer longer than {MAX_ANSWER} bytes")
    return decode_answer(bytes(data))


def _arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vmdnetctl", add_help=False)
    ap.add_argument("-o", dest="format", choices=FORMATS, default="table")
    ap.add_argument("-s", dest="socket", default=DEFAULT_SOCKET)
    ap.add_argument("-h", "--help", action="store_true")
    ap.add_argument("words", nargs=argparse.REMAINDER)
    return ap


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _arguments().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit:
        err.write(USAGE)
        return EXIT_USAGE
    if args.help:
        out.write(USAGE)
        return EXIT_OK
    try:
        req = parse_command(args.words)
    except UsageError as exc:
        err.write(f"vmdnetctl: {exc}\n{USAGE}")
        return EXIT_USAGE
    try:
        result = ask(args.socket, req)
    except ControlError as exc:
        err.write(f"vmdnetctl: {exc}\n")
        return EXIT_FAILURE
    except OSError as exc:
        err.write(f"vmdnetctl: {args.socket}: {exc.strerror or exc}\n")
        return EXIT_FAILURE
    out.write(render(req.command, result, args.format) + "\n")
    return EXIT_OK
