"""The parent's side of privsep with real parts, no VMM: a real tap in a namespace,
a real vionet child (spawned and sandboxed as vmdnetd does it), and the test
playing a hostile child on a real SEQPACKET channel.

Checked: the parent issues TUNSETOFFLOAD for requests within the interface's
configured offloads (ethtool is the oracle) and refuses the rest with EPERM
without touching the tap; a spawned vionet gets its tap over the channel,
sandboxes itself, serves each connection the parent sends (a new one
replaces the old: the old VMM sees its connection end, the PID stays),
answers STATS_REQUEST with its counters, and exits when the parent's channel
closes; a vionet sent a tap that is not the one named, or a connection fd
that is not a socket, exits (fail closed).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest
from netns import NetNS, root_skip_reason

from vmdnet.daemon import netlink
from vmdnet.daemon.vionet import VionetProc, VionetSpec, offload_ceiling, spawn
from vmdnet.privsep import sandbox
from vmdnet.privsep.channel import Channel, socketpair
from vmdnet.privsep.child import EXIT_PARENT_GONE
from vmdnet.privsep.codec import (
    PARENT_ID,
    Peer,
    Result,
    TapSetOffload,
    TapSetVnetHdrSz,
    VhostUserFd,
    VionetTap,
)
from vmdnet.tun import caps as tcaps

pytestmark = pytest.mark.root

TAP = "vnpp0"
# A vionet starts (imports, sandbox) in about a second; a loaded machine gets margin.
CHILD_START_S = 60.0
CHILD_EXIT_S = 30.0
POLL_S = 0.1
VIRTIO_F_VERSION_1 = 1 << 32


@pytest.fixture
def ns_tap() -> Iterator[tuple[NetNS, int]]:
    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)
    ns = NetNS("privsep")
    tap = None
    try:
        with ns.entered():
            tap = netlink.open_tap(netlink.TapSpec(TAP, bytes.fromhex("fee1bad10101")))
        yield ns, tap.fd
    finally:
        if tap is not None:
            tap.close()
        ns.close()


def ethtool_k(ns: NetNS) -> str:
    return subprocess.run(["ip", "netns", "exec", ns.name, "ethtool", "-k", TAP],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def spec(tap_fd: int, offloads: frozenset[str], tmp_path, tap_name: str = TAP) -> VionetSpec:
    return VionetSpec(iface_id=7, tap_fd=tap_fd, tap_name=tap_name, offloads=offloads,
                      mac=bytes.fromhex("fee1bad00001"), sandbox=sandbox.ensure_user(),
                      chroot=sandbox.ensure_empty_dir(), log_path=str(tmp_path / "vionet.log"))


def test_offload_ceiling_follows_the_configuration() -> None:
    assert offload_ceiling(frozenset()) == 0
    assert offload_ceiling(frozenset({"tso4"})) == 0      # TSO without csum: nothing
    assert offload_ceiling(frozenset({"csum", "tso4"})) == tcaps.TUN_F_CSUM | tcaps.TUN_F_TSO4


def test_parent_checks_tap_requests(ns_tap, tmp_path) -> None:
    ns, tap_fd = ns_tap
    ours, theirs = socketpair()
    parent_end = Channel(ours, Peer.PARENT, Peer.VIONET, PARENT_ID)
    child = Channel(theirs, Peer.VIONET, Peer.PARENT, 7)
    v = VionetProc(spec(tap_fd, frozenset({"csum", "tso4", "tso6"}), tmp_path),
                   proc=None, channel=parent_end)  # type: ignore[arg-type]
    try:
        allowed = tcaps.TUN_F_CSUM | tcaps.TUN_F_TSO4
        too_much = allowed | tcaps.TUN_F_USO4 | tcaps.TUN_F_USO6

        def ask(body) -> int:
            seq = child.send(body)
            v.handle(parent_end.recv() or [])
            (answer,) = child.recv() or []
            assert answer.seq == seq and isinstance(answer.body, Result)
            return answer.body.errno

        assert ask(TapSetOffload(allowed)) == 0
        state = ethtool_k(ns)
        assert "tcp-segmentation-offload: on" in state, state
        assert ask(TapSetOffload(too_much)) == errno.EPERM
        assert v.refused == 1
        assert "tcp-segmentation-offload: on" in ethtool_k(ns)   # unchanged
        assert ask(TapSetOffload(0)) == 0
        assert "tcp-segmentation-offload: off" in ethtool_k(ns)
        assert ask(TapSetVnetHdrSz(10)) == 0
    finally:
        child.close()
        parent_end.close()


def wait_sandboxed(v: VionetProc, tmp_path) -> str:
    deadline = time.monotonic() + CHILD_START_S
    while True:
        status = open(f"/proc/{v.pid}/status").read()
        if "Seccomp:\t2" in status:
            return status
        assert v.proc.poll() is None, (tmp_path / "vionet.log").read_text()
        assert time.monotonic() < deadline, "vionet never entered its sandbox"
        time.sleep(POLL_S)


def get_features(vmm_end: socket.socket) -> int:
    """VHOST_USER_GET_FEATURES (1), version 1: the vionet answers on this connection."""
    vmm_end.settimeout(CHILD_START_S)
    vmm_end.sendall(struct.pack("=III", 1, 1, 0))
    reply = b""
    while len(reply) < 20:
        chunk = vmm_end.recv(64)
        assert chunk, "vionet closed the connection"
        reply += chunk
    return struct.unpack_from("=Q", reply, 12)[0]


def test_spawned_vionet_sandboxes_and_reports(ns_tap, tmp_path) -> None:
    _, tap_fd = ns_tap
    v = spawn(spec(tap_fd, frozenset({"csum"}), tmp_path))
    first, conn = socket.socketpair()
    second, conn2 = socket.socketpair()
    try:
        status = wait_sandboxed(v, tmp_path)
        # Only the channel (and stdio) at exec: the tap came as a message.  (Read
        # once it runs: right after exec the kernel may not have set up argv yet.)
        argv = open(f"/proc/{v.pid}/cmdline", "rb").read().split(b"\0")
        assert b"--privsep-fd" in argv and b"--tap-fd" not in argv and b"--fd" not in argv
        assert "NoNewPrivs:\t1" in status
        fds = [os.readlink(f"/proc/{v.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{v.pid}/fd")]
        assert fds.count("/dev/net/tun") == 1, fds
        # A connection after the sandbox is in place: recvmsg with SCM_RIGHTS is allowed.
        v.send_connection(conn)
        conn.close()
        assert get_features(first) & VIRTIO_F_VERSION_1
        # The VMM reconnects: the same vionet serves the new connection, ends the old.
        v.send_connection(conn2)
        conn2.close()
        assert get_features(second) & VIRTIO_F_VERSION_1
        first.settimeout(CHILD_START_S)
        assert first.recv(64) == b""
        stats = v.query_stats(timeout=CHILD_START_S)
        assert stats is not None
        assert stats["tap"]["offloads_allowed"] == ["csum"]
        assert stats["connections"] == 2 and stats["disconnects"] == 1
        assert v.proc.poll() is None
        # The parent goes away: the child notices and exits on its own.
        v.channel.close()
        v.proc.wait(CHILD_EXIT_S)
        assert v.proc.returncode == 3, (tmp_path / "vionet.log").read_text()
    finally:
        if v.proc.poll() is None:
            v.proc.kill()
            v.proc.wait()
        for s in (first, second, conn, conn2):
            s.close()
        v.channel.close()  # idempotent


def test_vionet_refuses_a_tap_that_is_not_the_one_named(ns_tap, tmp_path) -> None:
    """The message names another tap than the fd is: the vionet exits before its sandbox."""
    _, tap_fd = ns_tap
    v = spawn(spec(tap_fd, frozenset(), tmp_path, tap_name="vnother0"))
    try:
        v.proc.wait(CHILD_EXIT_S)
        assert v.proc.returncode == EXIT_PARENT_GONE
        assert "the fd is tap vnpp0" in (tmp_path / "vionet.log").read_text()
    finally:
        v.stop()


def test_vionet_refuses_a_second_tap(ns_tap, tmp_path) -> None:
    """The tap is given once, before the sandbox; another one later is a protocol error."""
    _, tap_fd = ns_tap
    v = spawn(spec(tap_fd, frozenset(), tmp_path))
    try:
        wait_sandboxed(v, tmp_path)
        v.channel.send(VionetTap(TAP, 12), fd=tap_fd)
        v.proc.wait(CHILD_EXIT_S)
        assert v.proc.returncode == EXIT_PARENT_GONE
        assert "a second VIONET_TAP" in (tmp_path / "vionet.log").read_text()
    finally:
        v.stop()


def test_vionet_refuses_a_connection_that_is_not_a_socket(ns_tap, tmp_path) -> None:
    _, tap_fd = ns_tap
    v = spawn(spec(tap_fd, frozenset(), tmp_path))
    r, w = os.pipe()
    try:
        wait_sandboxed(v, tmp_path)
        v.channel.send(VhostUserFd(), fd=r)
        v.proc.wait(CHILD_EXIT_S)
        assert v.proc.returncode == EXIT_PARENT_GONE
        assert "is not a socket" in (tmp_path / "vionet.log").read_text()
    finally:
        v.stop()
        os.close(r)
        os.close(w)


def test_parent_kills_a_child_that_breaks_the_protocol(tmp_path) -> None:
    """A hostile child (the test) sends a frame the parent does not accept: the parent
    kills that child's process and schedules a restart; its tap stays."""
    if root_skip_reason():
        pytest.skip(root_skip_reason())
    from vmdnet.config import Config
    from vmdnet.daemon.parent import IfaceState, Options, Parent

    parent = Parent(Config(), Options(config_path="/nonexistent", rundir=str(tmp_path / "run"),
                                      control_socket=str(tmp_path / "ctl.sock")))
    ours, theirs = socketpair()
    victim = subprocess.Popen(["sleep", "600"])
    try:
        v = VionetProc(spec(-1, frozenset(), tmp_path), proc=victim,
                       channel=Channel(ours, Peer.PARENT, Peer.VIONET, PARENT_ID))
        ifs = IfaceState(id=1, vm_name="x", conf=None, ifname=TAP,  # type: ignore[arg-type]
                         mac=b"\0" * 6, sock_path="/nonexistent", vionet=v)
        parent.sel.register(v.channel, 1, ("vionet", ifs))
        theirs.send(b"\x01\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00\x01")
        parent._on_vionet_frame(ifs)  # STATS_REQUEST is not the parent's to receive
        assert victim.returncode == -9
        assert ifs.vionet is None and ifs.failures == 1 and ifs.restart_at > 0
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        theirs.close()
