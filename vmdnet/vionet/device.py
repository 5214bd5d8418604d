"""The vionet device: vhost-user events in, queues, memory and tap offloads out.

The control thread feeds vhost-user bytes to the sans-IO Backend and applies
its events here: map the guest memory, start a QueueWorker per ready ring
(virtio-net: even index = receiveq, odd = transmitq), recompute the tap's
offloads and header size when features change, stop rings on request.  A ring
the guest breaks is stopped (the device is reset from the guest's side: it
restarts when the VMM sets the ring up again); the process goes on.

Privileged operations on the tap (TUNSETOFFLOAD, TUNSETVNETHDRSZ) go through a
`TapControl`: the ioctls themselves in standalone mode, a request to the
privileged parent under vmdnetd.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Protocol

from vmdnet.offload.rsc import Coalescer
from vmdnet.tun import caps as tcaps
from vmdnet.vhost_user import Backend
from vmdnet.vhost_user.events import (
    Event,
    FeaturesChanged,
    MemTableChanged,
    Reset,
    VringFdsChanged,
    VringReady,
    VringStopped,
)
from vmdnet.vionet.datapath import (
    GuestMemory,
    MemRegion,
    PacketRing,
    RxConfig,
    RxPath,
    Stats,
    TxConfig,
    TxPath,
    Vring,
    lost_ram_pages,
)
from vmdnet.vionet.dhcp import DhcpConfig, DhcpServer
from vmdnet.vionet.responder import DhcpResponder
from vmdnet.vionet.worker import QueueWorker
from vmdnet.virtio import features as vf

log = logging.getLogger(__name__)

# The virtio_net_hdr size a tap is opened with when nobody says otherwise
# (vmdnet.tun.linux.open_tap's default, what VERSION_1 guests use).
DEFAULT_TAP_HDR_SZ = 12


def _notify_fd(fd: int | None) -> int:
    """A kick or call fd from the VMM, checked and made non-blocking; -1 for none.

    vhost-user passes eventfds here.  Anything else is refused (OSError: the
    connection is dropped): a regular file or /dev/zero as kick fd is always
    readable and would keep a queue thread spinning.  eventfds are anonymous
    inodes (no file type bits); so are a few other kinds, which do no harm.
    A blocking fd could stall a queue thread for good (an eventfd whose
    counter the VMM filled), and the control thread with it when it stops
    that queue: O_NONBLOCK is set on the file description the VMM shares
    (QEMU's own event notifiers have it already).  A notification that would
    block is dropped (the guest is then owed one; that is the VMM's doing).
    """
    if fd is None:
        return -1
    if stat.S_IFMT(os.fstat(fd).st_mode) != 0:
        raise OSError(errno.EINVAL, f"vring kick/call fd {fd} is not an eventfd")
    os.set_blocking(fd, False)
    return fd


class TapControl(Protocol):
    """The privileged tap operations vionet needs."""

    def set_offload(self, flags: int) -> None: ...

    def set_vnet_hdr_sz(self, size: int) -> None: ...


@dataclass
class _Queue:
    vring: Vring
    path: TxPath | RxPath
    worker: QueueWorker | None = None


class Vionet:
    """One virtio-net device over vhost-user, backed by one tap queue."""

    def __init__(self, tap_fd: int, tap_ctl: TapControl, tap_caps: tcaps.TapCaps, *,
                 discard: bool = False, queue_pairs: int = 1,
                 rsc_interval_us: int | None = None, lladdr: bytes | None = None,
                 locked: bool = False, dhcp: DhcpConfig | None = None,
                 vnet_hdr_sz: int = DEFAULT_TAP_HDR_SZ) -> None:
        self.tap_fd = tap_fd
        # Locked lladdr: checked per frame in C (TxConfig/RxConfig).
        self.lladdr = lladdr
        self.locked = locked
        # DHCP for a local interface: TX intercepts, a thread answers, RX injects.
        self.responder: DhcpResponder | None = None
        if dhcp is not None:
            self.responder = DhcpResponder(DhcpServer(dhcp), PacketRing(), PacketRing())
            self.responder.start()
        self.tap_ctl = tap_ctl
        self.caps = tap_caps
        self.discard = discard
        self.rsc_interval_us = rsc_interval_us
        self.coalescer: Coalescer | None = None
        self.backend = Backend(tcaps.offered_features(tap_caps, rsc=rsc_interval_us is not None),
                               queue_pairs=queue_pairs, stop_vring=self._stop_vring)
        self.mem = GuestMemory()
        self.queues: dict[int, _Queue] = {}
        self.rx_stats = Stats()
        self.tx_stats = Stats()
        self.acked = 0
        # The tap's virtio_net_hdr size now; changed with the guest's (see _features).
        self.hdr_sz = vnet_hdr_sz
        self.tap_offload = 0
        self.counters = {"connections": 0, "disconnects": 0, "protocol_errors": 0,
                         "ring_resets": 0, "feature_changes": 0, "ram_pages_lost": 0}
        self._lost_seen = lost_ram_pages()
        self.started = time.monotonic()

    # --- vhost-user events -------------------------------------------------
    def handle(self, events: list[Event]) -> None:
        """Apply the Backend's events in order."""
        for ev in events:
            if isinstance(ev, FeaturesChanged):
                self._features(ev.features)
            elif isinstance(ev, MemTableChanged):
                self._mem_table(ev)
            elif isinstance(ev, VringReady):
                self._start_ring(ev)
            elif isinstance(ev, VringFdsChanged):
                self._fds_changed(ev)
            elif isinstance(ev, Reset):
                self._reset(ev.device_state_cleared)
            elif isinstance(ev, VringStopped):
                log.debug("vring %d stopped at avail index %d", ev.index, ev.last_avail_idx)

    def _features(self, acked: int) -> None:
        self.acked = acked
        self.counters["feature_changes"] += 1
        hdr_sz = vf.net_hdr_size(acked)
        if self.caps.vnet_hdr and hdr_sz != self.hdr_sz:
            self.tap_ctl.set_vnet_hdr_sz(hdr_sz)
        self.hdr_sz = hdr_sz
        flags = tcaps.tun_offload_flags(acked, self.caps)
        if self.caps.vnet_hdr:
            self.tap_ctl.set_offload(flags)
        self.tap_offload = flags
        log.info("features %s; header %d bytes; tap offloads %#x",
                 ",".join(n.removeprefix("VIRTIO_NET_F_") for n in vf.names(acked)),
                 hdr_sz, flags)
        for q in self.queues.values():
            self._pause(q)
        self.coalescer = self._new_coalescer()
        for q in self.queues.values():
            q.path.configure(self._config(isinstance(q.path, TxPath)))
            if isinstance(q.path, RxPath):
                q.path.set_coalescer(self.coalescer)
            self._resume(q)

    def _new_coalescer(self) -> Coalescer | None:
        """Receive coalescing for what the guest negotiated, when configured."""
        if self.rsc_interval_us is None:
            return None
        if not vf.has(self.acked, vf.VIRTIO_NET_F_MRG_RXBUF):
            log.info("receive coalescing off: the guest did not take MRG_RXBUF")
            return None
        c = Coalescer.for_features(self.acked, interval_ns=self.rsc_interval_us * 1000,
                                   data_valid=vf.has(self.acked, vf.VIRTIO_NET_F_GUEST_CSUM))
        if c is None:
            log.info("receive coalescing off: the guest takes neither GSO nor RSC")
        else:
            log.info("receive coalescing on: %s mode, %d us", c.mode.name.lower(),
                     self.rsc_interval_us)
        return c

    def _config(self, tx: bool) -> TxConfig | RxConfig:
        if tx:
            return TxConfig.from_plan(tcaps.tx_plan(self.caps), self.hdr_sz, self.discard,
                                      lladdr=self.lladdr, locked=self.locked)
        return RxConfig(hdr_sz=self.hdr_sz, tap_has_vnet_hdr=self.caps.vnet_hdr,
                        mrg_rxbuf=vf.has(self.acked, vf.VIRTIO_NET_F_MRG_RXBUF),
                        guest_csum=vf.has(self.acked, vf.VIRTIO_NET_F_GUEST_CSUM),
                        lladdr=self.lladdr, locked=self.locked)

    def _mem_table(self, ev: MemTableChanged) -> None:
        running = [q for q in self.queues.values() if q.worker]
        for q in running:
            self._pause(q)
        self.mem.unmap_all()
        # The Backend owns the region fds; the mapping closes what it is given.
        self.mem.map(MemRegion(fd=os.dup(r.fd), gpa=r.guest_phys_addr, size=r.memory_size,
                               uaddr=r.userspace_addr, mmap_offset=r.mmap_offset)
                     for r in ev.regions)
        for q in running:
            q.vring.translate(self.mem)
            self._resume(q)

    def _start_ring(self, ev: VringReady) -> None:
        cfg = ev.vring
        tx = cfg.index % 2 == 1
        vring = Vring()
        vring.setup(self.mem, cfg.num, cfg.desc_user_addr, cfg.avail_user_addr,
                    cfg.used_user_addr, cfg.base, self.acked)
        vring.kick_fd = _notify_fd(cfg.kick_fd)
        vring.call_fd = _notify_fd(cfg.call_fd)
        r = self.responder
        if tx:
            path: TxPath | RxPath = TxPath(vring, self.mem, self.tap_fd, self._config(True),
                                           self.tx_stats)
            path.set_intercept(r.intercept if r else None)
        else:
            path = RxPath(vring, self.mem, self.tap_fd, self._config(False), self.rx_stats)
            path.set_coalescer(self.coalescer)
            path.set_inject(r.inject if r else None)
        if vring.broken:
            self._count_setup_break(cfg.index, vring, path)
        q = _Queue(vring, path)
        self.queues[cfg.index] = q
        self._resume(q)
        log.info("vring %d (%s, %s) started: %d entries, base %#x", cfg.index,
                 "tx" if tx else "rx", "packed" if cfg.packed else "split", cfg.num, cfg.base)

    def _count_setup_break(self, index: int, vring: Vring, path: TxPath | RxPath) -> None:
        """Count a ring broken by its setup (SET_VRING_BASE far from the guest's
        avail->idx): no batch runs on it to count it, so count it here as a batch
        and the reap would, a ring error and a reset; it stays stopped until the
        VMM sets it up again."""
        assert vring.broken is not None
        path.stats.c.ring_errors[int(vring.broken)] += 1
        self.counters["ring_resets"] += 1
        log.warning("vring %d broken at setup: %s; stopped until the VMM sets it up again",
                    index, vring.broken.name)

    def _fds_changed(self, ev: VringFdsChanged) -> None:
        q = self.queues.get(ev.index)
        if not q:
            return
        self._pause(q)
        q.vring.kick_fd = _notify_fd(ev.kick_fd)
        q.vring.call_fd = _notify_fd(ev.call_fd)
        self._resume(q)

    def _stop_vring(self, index: int) -> int | None:
        q = self.queues.pop(index, None)
        if not q:
            return None
        self._pause(q)
        return q.vring.reset()

    def _reset(self, cleared: bool) -> None:
        for index in list(self.queues):
            self._stop_vring(index)
        if cleared:
            self.mem.unmap_all()

    # --- queue threads -----------------------------------------------------
    def _pause(self, q: _Queue) -> None:
        if q.worker:
            q.worker.stop()
            self._note_worker_end(q.worker)
            q.worker = None

    def _resume(self, q: _Queue) -> None:
        if q.vring.broken:
            return
        kick = q.vring.kick_fd
        name = f"vionet-{'tx' if isinstance(q.path, TxPath) else 'rx'}"
        q.worker = QueueWorker(name, q.path, None if kick < 0 else kick)
        q.worker.start()

    def _note_worker_end(self, w: QueueWorker) -> None:
        if w.broken:
            self.counters["ring_resets"] += 1

    def reap(self) -> bool:
        """Called by the control loop: account for queues the guest broke.

        Returns True when the VMM took guest RAM away (truncated its file):
        the device cannot go on with that VMM, the caller drops it.
        """
        for q in self.queues.values():
            if q.worker and not q.worker.is_alive():
                self._note_worker_end(q.worker)
                q.worker.stop()
                q.worker = None
        return self._ram_lost()

    def _ram_lost(self) -> bool:
        lost = lost_ram_pages() - self._lost_seen
        if lost == 0:
            return False
        self._lost_seen += lost
        self.counters["ram_pages_lost"] += lost
        log.warning("the VMM took %d page(s) of guest RAM away (its file was truncated); "
                    "dropping the connection", lost)
        return True

    # --- connection lifecycle ----------------------------------------------
    def connected(self) -> None:
        self.counters["connections"] += 1

    def disconnected(self) -> None:
        """The VMM went away: stop everything, forget its memory, await the next one."""
        self.counters["disconnects"] += 1
        self.handle(self.backend.disconnect())
        self._reset(True)
        # Nothing uses the old VMM's fds now: close them (its RAM is freed only then).
        self.backend.release_retired()

    def close(self) -> None:
        self._reset(True)
        self.backend.close()
        if self.responder is not None:
            self.responder.stop()
            self.responder.intercept.close()
            self.responder.inject.close()
            self.responder = None

    def keep_fds(self) -> set[int]:
        """Descriptors of our own that the sandbox must leave open."""
        return self.responder.fds if self.responder is not None else set()

    # --- statistics --------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Everything an operator wants to see, JSON-serializable."""
        return {
            "negotiated_features": [n for n in vf.names(self.acked)],
            "header_size": self.hdr_sz,
            "tap": {"vnet_hdr": self.caps.vnet_hdr, "offloads_allowed": sorted(self.caps.offloads),
                    "tun_offload_flags": self.tap_offload},
            "queues": {str(i): {"num": q.vring.num, "last_avail_idx": q.vring.last_avail_idx,
                                "broken": q.vring.broken.name if q.vring.broken else None}
                       for i, q in self.queues.items()},
            "tx": self.tx_stats.as_dict(),
            "rx": self.rx_stats.as_dict(),
            "rsc": ({"mode": self.coalescer.mode.name.lower(),
                     "interval_us": self.rsc_interval_us, **self.coalescer.stats}
                    if self.coalescer is not None else None),
            "lladdr": self.lladdr.hex(":") if self.lladdr else None,
            "locked": self.locked,
            "dhcp": self.responder.stats() if self.responder is not None else None,
            **self.counters,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }
