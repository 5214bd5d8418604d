"""vmdnetctl: command parsing, the control protocol's checks, output formats, and one
round trip over a real unix socket to the daemon's own control code (with a handler
that answers from fixed data: the real daemon is tested in tests/e2e/test_daemon.py)."""

from __future__ import annotations

import io
import json
import os
import socket
import threading

import pytest
import yaml

from vmdnet.cli import format as F
from vmdnet.cli.main import UsageError, main, parse_command
from vmdnet.daemon import control
from vmdnet.privsep.control import (
    MAX_REQUEST,
    ControlError,
    Request,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)

STATUS = [{"id": 1, "pid": 4242, "memory": 512 * 1024 * 1024, "state": "running",
           "owner": "root", "name": "alpha",
           "interfaces": [{"tap": "vntap0", "vionet_pid": 4300}]},
          {"id": None, "pid": None, "memory": 1536 * 1024 * 1024, "state": "disabled",
           "owner": "vmuser", "name": "beta", "interfaces": []}]
STATS = {"negotiated_features": ["VIRTIO_NET_F_CSUM", "VIRTIO_F_VERSION_1"],
         "tap": {"tun_offload_flags": 7},
         "tx": {"packets": 10, "bytes": 1000, "sw_segmented": 2, "csum_completed": 1,
                "drops": {"bad_gso_type": 3, "hdr_short": 0}},
         "rx": {"packets": 20, "bytes": 3000, "sw_segmented": 1, "csum_completed": 4,
                "drops": {"bad_gso_type": 1, "rx_no_buffers": 5}}}
IFACES = [{"vm": "alpha", "index": 0, "tap": "vntap0", "switch": "lan",
           "lladdr": "fe:e1:ba:d0:00:01", "vionet_pid": 4300, "vionet_starts": 2,
           "stats": STATS},
          {"vm": "beta", "index": 0, "tap": "vntap1", "switch": None,
           "lladdr": "fe:e1:ba:d0:00:02", "vionet_pid": None, "vionet_starts": 0,
           "stats": None}]


@pytest.mark.parametrize("words,want", [
    (["status"], Request("status")),
    (["status", "alpha"], Request("status", "alpha")),
    (["show", "interfaces"], Request("show-interfaces")),
    (["show", "interfaces", "alpha"], Request("show-interfaces", "alpha")),
    (["start", "alpha"], Request("start", "alpha")),
    (["stop", "alpha"], Request("stop", "alpha")),
    (["reload"], Request("reload")),
    (["log", "verbose"], Request("log", arg="verbose")),
    (["log", "brief"], Request("log", arg="brief")),
])
def test_parse_command(words, want) -> None:
    req = parse_command(words)
    assert req == want
    # What the CLI sends, the daemon's decoder accepts unchanged.
    assert decode_request(encode_request(req)) == req


@pytest.mark.parametrize("words", [[], ["show"], ["show", "vms"], ["start"],
                                   ["stop", "a", "b"], ["reload", "x"], ["log"],
                                   ["log", "loud"], ["status", "a", "b"], ["frobnicate"]])
def test_parse_command_refuses(words) -> None:
    with pytest.raises(UsageError):
        parse_command(words)


def req_bytes(**fields) -> bytes:
    base = {"version": 1, "command": "status", "name": None, "arg": None}
    base.update(fields)
    return json.dumps(base).encode()


@pytest.mark.parametrize("data,match", [
    (b"not json", "not UTF-8 JSON"),
    (b"[]", "not a JSON object"),
    (req_bytes(version=2), "version"),
    (req_bytes(command="shutdown"), "unknown command"),
    (req_bytes(command="start"), "needs a name"),
    (req_bytes(command="reload", name="x"), "takes no name"),
    (req_bytes(name=5), "must be a string"),
    (req_bytes(command="log", arg="loud"), "log takes"),
    (req_bytes(arg="x"), "takes no argument"),
    (req_bytes(extra=1), "unknown request fields"),
    (b" " * (MAX_REQUEST + 1), "longer than"),
])
def test_decode_request_fails_closed(data, match) -> None:
    with pytest.raises(ControlError, match=match):
        decode_request(data)


def test_answers_round_trip() -> None:
    assert decode_answer(encode_answer(STATUS)) == STATUS
    with pytest.raises(ControlError, match="no vm called x"):
        decode_answer(encode_answer(error="no vm called x"))


def test_human_size() -> None:
    assert [F.human_size(n) for n in (None, 512, 512 * 1024 * 1024, 1536 * 1024 * 1024)] == \
        ["-", "512B", "512M", "1.5G"]


def test_status_table() -> None:
    lines = F.render("status", STATUS, "table").splitlines()
    assert lines[0].split() == F.STATUS_HEADERS
    assert lines[1].split() == ["1", "4242", "512M", "running", "root", "alpha", "vntap0(4300)"]
    assert lines[2].split() == ["-", "-", "1.5G", "disabled", "vmuser", "beta", "-"]


def test_interfaces_table_adds_up_counters() -> None:
    text = F.render("show-interfaces", IFACES, "table")
    lines = text.splitlines()
    row = lines[1].split()
    assert row == ["alpha", "0", "vntap0", "lan", "fe:e1:ba:d0:00:01", "4300", "2", "0x7",
                   "10", "1000", "20", "3000", "3", "5", "bad_gso_type=4,rx_no_buffers=5"]
    assert lines[2].split()[:7] == ["beta", "0", "vntap1", "-", "fe:e1:ba:d0:00:02", "-", "0"]
    assert "alpha/0: features csum,version_1" in text


def test_interfaces_table_shows_coalescing() -> None:
    rsc = {"mode": "gso", "interval_us": 300, "rsc_received": 100, "rsc_coalesced": 90,
           "rsc_units_coalesced": 10, "rsc_dup_acks": 2, "rsc_timer_flushes": 3}
    iface = {**IFACES[0], "stats": {**IFACES[0]["stats"], "rsc": rsc}}
    text = F.render("show-interfaces", [iface], "table")
    assert ("alpha/0: coalescing (gso, 300 us): 100 received, 90 merged into 10 units, "
            "2 dup ACKs, 3 timer flushes, 0 out of order") in text
    assert "coalescing" not in F.render("show-interfaces", IFACES, "table")


@pytest.mark.parametrize("fmt,load", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_json_and_yaml_are_the_answer_itself(fmt, load) -> None:
    assert load(F.render("status", STATUS, fmt)) == STATUS
    assert load(F.render("show-interfaces", IFACES, fmt)) == IFACES


class FixedDaemon:
    """The daemon's control code on a real socket, answering from fixed data."""

    def __init__(self, path: str, uid_override: int | None = None) -> None:
        self.sock = control.listen(path, None, None)
        self.sock.setblocking(True)
        self.uid_override = uid_override
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def handle(self, req: Request):
        if req.command == "status":
            return STATUS
        if req.command == "start" and req.name == "nosuch":
            raise control.CommandFailed("no vm called nosuch")
        return f"did {req.command}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            uid = control.peer_uid(conn)
            client = control.Client(conn, uid if self.uid_override is None
                                    else self.uid_override)
            conn.settimeout(5)
            while not control.receive(client):
                pass
            control.finish(client, control.answer(client, self.handle))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), out, err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_over_a_real_socket(tmp_path) -> None:
    path = str(tmp_path / "ctl.sock")
    d = FixedDaemon(path)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o660"
        rc, out, _ = run_cli("-s", path, "-o", "json", "status")
        assert rc == 0 and json.loads(out) == STATUS
        rc, out, _ = run_cli("-s", path, "reload")
        assert (rc, out) == (0, "did reload\n")
        rc, _, err = run_cli("-s", path, "start", "nosuch")
        assert rc == 1 and "no vm called nosuch" in err
    finally:
        d.close()
    rc, _, err = run_cli("-s", path, "status")
    assert rc == 1 and path in err
    rc, _, err = run_cli("-s", path, "frobnicate")
    assert rc == 2 and "unknown command" in err


def test_non_root_may_only_read(tmp_path) -> None:
    path = str(tmp_path / "ctl.sock")
    d = FixedDaemon(path, uid_override=1000)
    try:
        assert run_cli("-s", path, "-o", "yaml", "status")[0] == 0
        for words in (["reload"], ["start", "a"], ["stop", "a"], ["log", "verbose"]):
            rc, _, err = run_cli("-s", path, *words)
            assert rc == 1 and "permission denied" in err
    finally:
        d.close()
