"""vmdnetd with an external VMM (`vhost-user socket PATH`, no `boot`): the test is the VMM.

No QEMU: the test connects to the interface's vhost-user socket itself and speaks
enough vhost-user (GET_FEATURES) to see that a vionet serves it. The daemon is
started without -d, so it detaches as in production; its PID comes from
SO_PEERCRED on a control connection and it is stopped by that PID.

Checked: the detached daemon answers; the interface's sandboxed vionet runs
before any VMM connects and answers vhost-user on the connection the parent
hands it; a second connection (the VMM reconnecting) is served by the same
vionet PID, which ends the first and unmaps its memory (a memfd sent with
SET_MEM_TABLE leaves /proc/PID/maps and the fd table); a killed vionet is replaced and the next
connection is served; reload with a changed switch restarts the VM on it;
stop removes the tap and the socket; SIGTERM removes the bridge it created and
the control socket. Namespace vn-daemon-ext-<pid>.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guestlib import GuestNetns, remove_stale_netns

from vmdnet.cli.main import ask
from vmdnet.daemon.control import UCRED
from vmdnet.daemon.parent import BACKOFF_MAX_S, STATE_NO_VMM, STATE_STOPPED, backoff
from vmdnet.privsep import sandbox
from vmdnet.privsep.control import MAX_REQUEST, ControlError, Request, decode_answer

pytestmark = [pytest.mark.root]

NS_PREFIX = "vn-daemon-ext-"
BRIDGE = "vnbrx0"
TAP = "vndx0"
# Bounds for a loaded machine, never part of an assertion.
START_S = 60.0
STOP_S = 60.0
POLL_S = 0.1
# vhost-user: VHOST_USER_GET_FEATURES, flags version 1; the reply has the REPLY bit.
GET_FEATURES = 1
VHOST_USER_VERSION = 0x1
VHOST_USER_REPLY = 0x4
VHOST_HEADER = struct.Struct("=III")
VIRTIO_F_VERSION_1 = 1 << 32
# VHOST_USER_SET_MEM_TABLE: one region of "guest RAM" (a memfd) at a made-up VMM address.
SET_MEM_TABLE = 5
GUEST_RAM = 1 << 20
GUEST_UADDR = 0x7F0000000000


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, taps, setresuid)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


def test_backoff_doubles_and_is_capped() -> None:
    delays = [backoff(n) for n in range(12)]
    assert delays[:4] == [0.0, 0.5, 1.0, 2.0]
    assert delays[-1] == BACKOFF_MAX_S and sorted(delays) == delays


class ExternalSetup:
    def __init__(self, workdir: Path, ns: GuestNetns) -> None:
        self.ns = ns
        self.sock = str(workdir / "ext.sock")
        self.ctl = str(workdir / "ctl.sock")
        self.conf = workdir / "vmdnet.conf"
        self.conf.write_text(self.config())
        self.daemon_pid: int | None = None
        self.seen: set[int] = set()
        res = ns.run([sys.executable, "-m", "vmdnet.daemon", "-f", str(self.conf), "-r",
                      str(workdir / "run"), "-s", self.ctl], timeout=START_S)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + START_S
        while not os.path.exists(self.ctl):
            assert time.monotonic() < deadline, "the detached daemon made no control socket"
            time.sleep(POLL_S)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.ctl)
            pid, _, _ = UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  UCRED.size))
        self.daemon_pid = pid

    def config(self, group: str | None = None) -> str:
        grp = f'\n\tgroup "{group}"' if group else ""
        return f"""switch "lan" {{
	interface "{BRIDGE}"{grp}
}}
vm "ext" {{
	interface "{TAP}" {{
		switch "lan"
		vhost-user socket "{self.sock}"
		offload {{ csum }}
	}}
}}
"""

    def status(self) -> dict:
        (vm,) = ask(self.ctl, Request("status"))
        pid = vm["interfaces"][0]["vionet_pid"] if vm["interfaces"] else None
        if pid:
            self.seen.add(pid)
        return vm

    def vionet_pid(self, not_pid: int | None = None) -> int:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            pid = self.status()["interfaces"][0]["vionet_pid"]
            if pid is not None and pid != not_pid:
                return pid
            time.sleep(POLL_S)
        raise AssertionError("no (new) vionet")

    def close(self) -> None:
        if self.daemon_pid is not None and Path(f"/proc/{self.daemon_pid}").exists():
            os.kill(self.daemon_pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_S
            while Path(f"/proc/{self.daemon_pid}").exists() and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if Path(f"/proc/{self.daemon_pid}").exists():
                os.kill(self.daemon_pid, signal.SIGKILL)
        for pid in self.seen:
            try:
                if b"vmdnet.vionet.main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[ExternalSetup]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    remove_stale_netns(NS_PREFIX)
    ns = GuestNetns(f"{NS_PREFIX}{os.getpid()}")
    ext = None
    try:
        ext = ExternalSetup(tmp_path, ns)
        yield ext
    finally:
        if ext is not None:
            ext.close()
        ns.close()


def vmm_connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(START_S)
    s.connect(path)
    return s


def get_features(s: socket.socket) -> int:
    s.sendall(VHOST_HEADER.pack(GET_FEATURES, VHOST_USER_VERSION, 0))
    data = b""
    while len(data) < VHOST_HEADER.size + 8:
        chunk = s.recv(64)
        assert chunk, "vionet closed the connection"
        data += chunk
    request, flags, size = VHOST_HEADER.unpack_from(data)
    assert (request, size) == (GET_FEATURES, 8) and flags & VHOST_USER_REPLY
    return struct.unpack_from("=Q", data, VHOST_HEADER.size)[0]


def set_mem_table(s: socket.socket, name: str) -> int:
    """VHOST_USER_SET_MEM_TABLE with one region: a fresh memfd called NAME, which the
    vionet maps (visible in /proc/PID/maps). Returns the memfd (the caller closes it)."""
    fd = os.memfd_create(name)
    os.ftruncate(fd, GUEST_RAM)
    body = struct.pack("=II", 1, 0) + struct.pack("=QQQQ", 0, GUEST_RAM, GUEST_UADDR, 0)
    s.sendmsg([VHOST_HEADER.pack(SET_MEM_TABLE, VHOST_USER_VERSION, len(body)) + body],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("=i", fd))])
    return fd


def memfd_mapped(pid: int, name: str) -> bool:
    return f"/memfd:{name}" in Path(f"/proc/{pid}/maps").read_text()


def test_external_vmm_lifecycle(setup: ExternalSetup) -> None:
    vm = setup.status()
    assert vm["state"] == STATE_NO_VMM and vm["pid"] is None
    pid1 = setup.vionet_pid()              # one vionet per interface, before any VMM
    first = vmm_connect(setup.sock)
    ram = set_mem_table(first, "vn-ext-first")
    assert get_features(first) & VIRTIO_F_VERSION_1    # answered after SET_MEM_TABLE
    assert memfd_mapped(pid1, "vn-ext-first")
    status = Path(f"/proc/{pid1}/status").read_text()
    user = sandbox.lookup_user(sandbox.DEFAULT_USER)
    assert user is not None and f"Uid:\t{user.uid}\t" in status and "Seccomp:\t2" in status
    # It got no fd at exec but its privsep channel: the tap came as a message.
    argv = Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")
    assert b"--tap-fd" not in argv and b"--fd" not in argv and b"--privsep-fd" in argv

    # A new connection (the VMM restarted or reconnected): the same vionet serves it
    # and ends the old one, unmapping the old VMM's memory and closing its fds.
    second = vmm_connect(setup.sock)
    assert get_features(second) & VIRTIO_F_VERSION_1
    assert first.recv(64) == b""                            # ended by the vionet
    first.close()
    assert not memfd_mapped(pid1, "vn-ext-first")
    held = [os.readlink(f"/proc/{pid1}/fd/{fd}") for fd in os.listdir(f"/proc/{pid1}/fd")]
    assert not any("vn-ext-first" in t for t in held), held
    os.close(ram)
    assert setup.vionet_pid() == pid1
    ifaces = ask(setup.ctl, Request("show-interfaces"))
    stats = ifaces[0]["stats"]
    assert ifaces[0]["vionet_starts"] == 1
    assert (stats["connections"], stats["disconnects"]) == (2, 1)

    # A killed vionet: its connection drops; a new vionet serves the next one.
    os.kill(pid1, signal.SIGKILL)
    assert second.recv(64) == b""
    second.close()
    pid3 = setup.vionet_pid(not_pid=pid1)
    third = vmm_connect(setup.sock)
    assert get_features(third) & VIRTIO_F_VERSION_1
    assert setup.vionet_pid() == pid3
    ifaces = ask(setup.ctl, Request("show-interfaces"))
    assert ifaces[0]["vionet_starts"] == 2 and ifaces[0]["stats"]["connections"] == 1

    # The control socket fails closed and one silent client does not stall the others.
    with socket.socket(socket.AF_UNIX) as silent, socket.socket(socket.AF_UNIX) as big:
        silent.connect(setup.ctl)
        big.connect(setup.ctl)
        big.sendall(b"x" * (MAX_REQUEST + 100))
        big.shutdown(socket.SHUT_WR)
        big.settimeout(START_S)
        answer = b"".join(iter(lambda: big.recv(4096), b""))
        with pytest.raises(ControlError, match="longer than"):
            decode_answer(answer)
        assert setup.status()["name"] == "ext"

    # reload: a changed switch restarts the VMs on it (their taps join the new bridge).
    setup.conf.write_text(setup.config(group="extlan"))
    assert "1 vm(s) changed" in ask(setup.ctl, Request("reload"))
    assert third.recv(64) == b""
    third.close()
    link = setup.ns.run(["ip", "-d", "link", "show", BRIDGE]).stdout
    assert "alias vmdnet group extlan" in link, link
    fourth = vmm_connect(setup.sock)
    pid4 = setup.vionet_pid(not_pid=pid3)
    assert get_features(fourth) & VIRTIO_F_VERSION_1

    # stop: the vionet, the tap and the socket go away.
    assert "stopped" in ask(setup.ctl, Request("stop", "ext"))
    assert setup.status()["state"] == STATE_STOPPED
    assert fourth.recv(64) == b""
    fourth.close()
    assert not Path(f"/proc/{pid4}").exists() or b"vionet" not in \
        Path(f"/proc/{pid4}/cmdline").read_bytes()
    assert not os.path.exists(setup.sock)
    assert setup.ns.run(["ip", "link", "show", TAP], check=False).returncode != 0

    # SIGTERM: the daemon removes the bridge it made and its control socket.
    os.kill(setup.daemon_pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while Path(f"/proc/{setup.daemon_pid}").exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert not Path(f"/proc/{setup.daemon_pid}").exists()
    assert not os.path.exists(setup.ctl)
    assert setup.ns.run(["ip", "link", "show", BRIDGE], check=False).returncode != 0
