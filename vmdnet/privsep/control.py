"""The control socket protocol between vmdnetctl and vmdnetd (sans-IO).

One request per connection: the client writes one line of UTF-8 JSON and
shuts down its write side; the daemon answers with one line and closes.

    request   {"version": 1, "command": COMMAND, "name": NAME-or-null, "arg": ARG-or-null}
    answer    {"version": 1, "ok": true,  "result": ...}
              {"version": 1, "ok": false, "error": "message"}

Commands and who may send them (the daemon checks SO_PEERCRED):
    status [NAME]            anyone   VMs: id, pid, state, owner, name, interfaces
    show-interfaces [NAME]   anyone   per interface: tap, switch, vionet pid, counters
    start NAME               root
    stop NAME                root
    reload                   root     re-read the file; a broken file changes nothing
    log verbose|brief        root

The daemon validates every field (decode_request) and fails closed; names
are checked with the configuration's own validators by the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CONTROL_VERSION = 1
# A request is a command and a name of at most 63 bytes: 4 KiB is plenty and
# bounds what an unprivileged client can make the daemon buffer.
MAX_REQUEST = 4096
# Answers carry counters for every interface; 16 MiB bounds a broken daemon.
MAX_ANSWER = 16 * 1024 * 1024
DEFAULT_SOCKET = "/run/vmdnet.sock"

READ_COMMANDS = frozenset({"status", "show-interfaces"})
WRITE_COMMANDS = frozenset({"start", "stop", "reload", "log"})
COMMANDS = READ_COMMANDS | WRITE_COMMANDS
# Which commands take a name: required, optional or never.
NAME_REQUIRED = frozenset({"start", "stop"})
NAME_OPTIONAL = frozenset({"status", "show-interfaces"})
LOG_ARGS = frozenset({"verbose", "brief"})


class ControlError(ValueError):
    """A request or answer that breaks the protocol."""


@dataclass(frozen=True)
class Request:
    command: str
    name: str | None = None
    arg: str | None = None

    @property
    def writes(self) -> bool:
        return self.command in WRITE_COMMANDS


def encode_request(req: Request) -> bytes:
    line = json.dumps({"version": CONTROL_VERSION, "command": req.command, "name": req.name,
                       "arg": req.arg}) + "\n"
    return line.encode()


def _load(data: bytes, limit: int, what: str) -> dict[str, Any]:
    if len(data) > limit:
        raise ControlError(f"{what} longer than {limit} bytes")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ControlError(f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ControlError(f"{what} is not a JSON object")
    if obj.get("version") != CONTROL_VERSION:
        raise ControlError(f"{what} has version {obj.get('version')!r}, "
                           f"want {CONTROL_VERSION}")
    return obj


def decode_request(data: bytes) -> Request:
    """Check everything a request says about itself (not whether NAME exists)."""
    obj = _load(data, MAX_REQUEST, "request")
    if set(obj) - {"version", "command", "name", "arg"}:
        raise ControlError(f"unknown request fields: {sorted(set(obj) - {'version'})}")
    command, name, arg = obj.get("command"), obj.get("name"), obj.get("arg")
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command!r}")
    if name is not None and not isinstance(name, str):
        raise ControlError("name must be a string")
    if command in NAME_REQUIRED and name is None:
        raise ControlError(f"{command} needs a name")
    if command not in NAME_REQUIRED | NAME_OPTIONAL and name is not None:
        raise ControlError(f"{command} takes no name")
    if command == "log":
        if arg not in LOG_ARGS:
            raise ControlError(f"log takes {' or '.join(sorted(LOG_ARGS))}, not {arg!r}")
    elif arg is not None:
        raise ControlError(f"{command} takes no argument")
    return Request(command, name, arg)


def encode_answer(result: Any = None, error: str | None = None) -> bytes:
    if error is not None:
        obj = {"version": CONTROL_VERSION, "ok": False, "error": error}
    else:
        obj = {"version": CONTROL_VERSION, "ok": True, "result": result}
    return (json.dumps(obj, sort_keys=True) + "\n").encode()


def decode_answer(data: bytes) -> Any:
    """The result of an answer; ControlError with the daemon's message if it failed."""
    obj = _load(data, MAX_ANSWER, "answer")
    if obj.get("ok") is True:
        return obj.get("result")
    if obj.get("ok") is False and isinstance(obj.get("error"), str):
        raise ControlError(obj["error"])
    raise ControlError("answer is neither ok nor an error")
