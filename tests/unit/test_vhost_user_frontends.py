"""The Backend and socket adapter against real vhost-user front-ends, no guest needed:

- QEMU 7.2 (`-netdev vhost-user`, paused, no device): its init handshake.
- DPDK's net_virtio_user in dpdk-testpmd (an independent virtio-net driver): the whole
  start (features, memfd memory table, both vrings ready) and the stop on exit
  (GET_VRING_BASE per ring, then EOF).  The rings it reports are mapped and read.

Each skips when its program is absent.  Processes are ended by PID in `finally`.
"""

from __future__ import annotations

import mmap
import os
import select
import shutil
import struct
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import test_vhost_user_frames as fr  # noqa: E402

from vmdnet.vhost_user import (  # noqa: E402
    DEFAULT_PROTOCOL_FEATURES,
    SUPPORTED_PROTOCOL_FEATURES,
    Backend,
    FeaturesChanged,
    MemTableChanged,
    Reset,
    VringReady,
    VringStopped,
)
from vmdnet.vhost_user import socket as vus  # noqa: E402
from vmdnet.virtio import features as F  # noqa: E402
from vmdnet.virtio import virtqueue as V  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
TESTPMD = shutil.which("dpdk-testpmd")
# Bounds: seconds to wait for the front-end to connect / for the next message, and
# how many reads one session may take (each read is one header or one payload).
CONNECT_TIMEOUT = 30.0
IDLE_TIMEOUT = 10.0
MAX_READS = 400
OFFER = F.parse_names(["version_1", "mrg_rxbuf", "csum", "guest_csum", "mac", "status"])


class Session:
    """One accepted front-end connection, pumped into a Backend in bounded steps."""

    def __init__(self, listener: vus.Listener, b: Backend) -> None:
        ready, _, _ = select.select([listener], [], [], CONNECT_TIMEOUT)
        assert ready, "front-end never connected"
        self.conn = listener.accept()
        self.b = b
        self.eof = False

    def run(self, until) -> list:
        """Pump until until(events) holds or the front-end hangs up (EOF: disconnect)."""
        events: list = []
        for _ in range(MAX_READS):
            ready, _, _ = select.select([self.conn], [], [], IDLE_TIMEOUT)
            assert ready, f"front-end went quiet; events so far: {events}"
            got = self.conn.pump(self.b)
            if got is None:
                self.eof = True
                return events + self.b.disconnect()
            events += got
            if until(events):
                return events
        raise AssertionError(f"no end after {MAX_READS} reads: {events}")

    def close(self) -> None:
        self.conn.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize("protocol", [DEFAULT_PROTOCOL_FEATURES, SUPPORTED_PROTOCOL_FEATURES],
                         ids=["default", "mem-slots"])
def test_qemu_init_handshake(tmp_path, protocol: int) -> None:
    before = fr.open_fds()
    path = str(tmp_path / "vu.sock")
    b = Backend(OFFER, protocol_features=protocol)
    with vus.listen(path) as listener, open(tmp_path / "qemu.log", "wb") as qlog:
        qemu = subprocess.Popen(
            [QEMU, "-nodefaults", "-nographic", "-S", "-machine", "none", "-monitor", "none",
             "-serial", "none", "-chardev", f"socket,id=c0,path={path}",
             "-netdev", "vhost-user,id=n0,chardev=c0"],
            stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog)
        try:
            # QEMU's vhost_dev_init ends by giving each vring its call and err fds.
            session = Session(listener, b)
            session.run(until=lambda ev: all(
                b.vring(i).err_fd is not None for i in range(b.num_vrings)))
            session.close()
        finally:
            stop(qemu)
    assert b.owner
    assert b.protocol_features == b.offered_protocol_features  # QEMU knows them all
    for i in range(b.num_vrings):
        v = b.vring(i)
        assert v.call_fd is not None and v.err_fd is not None and v.kick_fd is None
        assert not b.vring_ready(i)
    b.close()
    assert fr.open_fds() - before == set()


def check_ring_memory(region, vring) -> None:
    """Read the ring through the region's fd: the driver's free-list chain and flags."""
    with mmap.mmap(region.fd, region.mmap_offset + region.memory_size) as m:
        def at(addr: int) -> int:
            assert region.contains_user(addr, 1)
            return addr - region.userspace_addr + region.mmap_offset
        # virtio drivers chain free descriptors: desc[i].next == i + 1.
        nexts = [struct.unpack_from("<H", m, at(vring.desc_user_addr) + 16 * i
                                    + V.VRING_DESC_OFF_NEXT)[0] for i in range(vring.num - 1)]
        assert nexts == list(range(1, vring.num))
        # A polling driver (testpmd) asks for no interrupts.
        (flags,) = struct.unpack_from("<H", m, at(vring.avail_user_addr))
        assert flags & V.VRING_AVAIL_F_NO_INTERRUPT


@pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd not installed")
def test_dpdk_virtio_user_start_and_stop(tmp_path) -> None:
    before = fr.open_fds()
    path = str(tmp_path / "vu.sock")
    prefix = f"vn-vu-test-{os.getpid()}"
    stopped: list[int] = []
    b = Backend(OFFER, stop_vring=lambda i: stopped.append(i))  # nothing consumed: None
    with vus.listen(path) as listener:
        pmd = subprocess.Popen(
            [TESTPMD, "-l", "0,1", "--main-lcore", "0", "--no-huge", "-m", "256", "--no-pci",
             f"--file-prefix={prefix}", f"--vdev=net_virtio_user0,path={path},queues=1",
             "--", "--nb-cores=1", "--total-num-mbufs=2048"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def two_ready(ev: list) -> bool:
                return sum(isinstance(e, VringReady) for e in ev) == 2
            session = Session(listener, b)
            start = session.run(until=two_ready)
            (table,) = [e for e in start if isinstance(e, MemTableChanged)]
            rings = {e.index: e.vring for e in start if isinstance(e, VringReady)}
            for vring in rings.values():
                assert V.valid_queue_size(vring.num) and vring.kick_fd is not None
                region = next(r for r in table.regions if r.contains_user(vring.desc_user_addr, 1))
                check_ring_memory(region, vring)
            (feat,) = [e.features for e in start if isinstance(e, FeaturesChanged)]
            assert feat & ~b.offered_features == 0 and F.has(feat, F.VIRTIO_F_VERSION_1)
            pmd.stdin.write(b"\n")  # "Press enter to exit": stops the port
            pmd.stdin.close()
            end = session.run(until=lambda ev: False)
            assert session.eof
            session.close()
        finally:
            stop(pmd)
            shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    assert [e for e in end if isinstance(e, VringStopped)] == [VringStopped(0, 0),
                                                             VringStopped(1, 0)]
    assert stopped == [0, 1] and end[-1] == Reset(True)
    b.close()
    assert fr.open_fds() - before == set()

