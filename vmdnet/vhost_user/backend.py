"""Sans-IO vhost-user back-end state machine: requests in, device events and replies out.

Rule for this file: no I/O (the only syscall is close() on fds it retires), no
packet data, no mmap.  It keeps the per-connection protocol state, checks every
request against it, and tells the device what changed.

Theory of operation
-------------------
The caller feeds socket bytes + SCM_RIGHTS fds to receive(); it gets device
events back and sends data_to_send() to the front-end after each call.

  handshake   GET_FEATURES -> offered features (+ PROTOCOL_FEATURES bit 30)
              GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM -> queue pairs, SET_OWNER
  setup       SET_FEATURES       -> FeaturesChanged(acked)
              SET_MEM_TABLE      -> MemTableChanged(regions) (ADD/REM_MEM_REG too)
              SET_VRING_NUM/BASE/ADDR/KICK/CALL/ERR, SET_VRING_ENABLE
  running     a vring is *ready* when it is started (SET_VRING_KICK seen, with
              an fd or NOFD = poll), enabled, has num and addresses, features
              were set, and its areas lie inside one memory region each.
              Becoming ready -> VringReady(index, VringConfig).
              Enabled: without VHOST_USER_F_PROTOCOL_FEATURES acked, SET_FEATURES
              enables every ring (spec: "starts directly in the enabled state");
              with it, only SET_VRING_ENABLE(1) does.
  stopping    leaving ready (GET_VRING_BASE, SET_VRING_ENABLE(0), RESET_*,
              disconnect) calls stop_vring(index) at once: the device stops
              using the ring and returns its last_avail_idx (None if it never
              started it), then VringStopped(index, last_avail_idx) follows.
              GET_VRING_BASE replies with that index and un-starts the ring.
  changes     new kick/call/err fd on a ready ring -> VringFdsChanged; a change
              of RING_PACKED/EVENT_IDX stops and restarts ready rings.
  resets      RESET_OWNER: stop and disable rings, drop their fds -> Reset(False).
              RESET_DEVICE / disconnect(): also forget features and memory
              -> Reset(True).  After disconnect() the Backend awaits a new
              connection in its initial state.

REPLY_ACK: a request with need_reply and no reply of its own is answered with a
u64 status (0 = done), whether or not REPLY_ACK was negotiated (as libvhost-user and
DPDK's vhost library do).  NET_SET_MTU outside 68..65535 answers 1.

Errors: any bad request raises VhostUserError (its .events holds the events of
the requests handled before it); the connection is dead: call disconnect().

Fds: the Backend owns every fd it received (memory regions, kick/call/err);
events lend them to the device (dup() them to keep them).  Replaced or dropped
fds are closed at the start of the next receive() or by close(), so the device
can still unregister them while handling the events that retired them;
release_retired() closes them at once (after a disconnect).  The
mapping of regions (mmap of fd from offset 0 for mmap_offset + memory_size,
after checking fstat size) is the device's job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmdnet.vhost_user import protocol as P
from vmdnet.vhost_user.codec import Codec, Message, Reply, close_fds
from vmdnet.vhost_user.events import (
    Event,
    FeaturesChanged,
    MemTableChanged,
    MtuChanged,
    Reset,
    VringConfig,
    VringFdsChanged,
    VringReady,
    VringStopped,
)
from vmdnet.vhost_user.protocol import (
    MemoryRegion,
    ProtocolFeature,
    Request,
    VhostUserError,
    VringAddr,
    VringFile,
    VringState,
)
from vmdnet.virtio import features as F
from vmdnet.virtio import virtqueue

log = logging.getLogger(__name__)

PF = ProtocolFeature
SUPPORTED_PROTOCOL_FEATURES = (1 << PF.MQ | 1 << PF.REPLY_ACK | 1 << PF.NET_MTU
                               | 1 << PF.RESET_DEVICE | 1 << PF.CONFIGURE_MEM_SLOTS)
# Offered unless the caller says otherwise.  CONFIGURE_MEM_SLOTS is opt-in: with
# it QEMU switches to ADD/REM_MEM_REG, which only unit tests exercise so far.
DEFAULT_PROTOCOL_FEATURES = SUPPORTED_PROTOCOL_FEATURES & ~(1 << PF.CONFIGURE_MEM_SLOTS)
# No dirty-page log and no IOTLB here, so these may not be offered.
UNSUPPORTED_FEATURES = F.bit(F.VHOST_F_LOG_ALL) | F.bit(F.VIRTIO_F_ACCESS_PLATFORM)
# Features that change where ring fields sit: running rings restart on change.
LAYOUT_FEATURES = F.bit(F.VIRTIO_F_RING_PACKED) | F.bit(F.VIRTIO_RING_F_EVENT_IDX)
SPLIT_BASE_MAX = 0xFFFF  # a split ring's last_avail_idx is a le16


@dataclass
class _Vring:
    num: int | None = None
    addr: VringAddr | None = None
    base: int = 0
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    started: bool = False
    ready: bool = False

    def fds(self) -> list[int]:
        return [fd for fd in (self.kick_fd, self.call_fd, self.err_fd) if fd is not None]


Handler = Callable[["Backend", Message, list], "Reply | int"]


class Backend:
    """vhost-user back-end protocol state for one device (see Theory of operation)."""

    def __init__(self, features: int, *, queue_pairs: int = 1,
                 protocol_features: int = DEFAULT_PROTOCOL_FEATURES,
                 stop_vring: Callable[[int], int | None] | None = None) -> None:
        if features & UNSUPPORTED_FEATURES:
            raise ValueError(f"cannot offer {F.names(features & UNSUPPORTED_FEATURES)}")
        extra = protocol_features & ~SUPPORTED_PROTOCOL_FEATURES
        if extra:
            raise ValueError(f"unsupported protocol features {P.protocol_feature_names(extra)}")
        if not 1 <= queue_pairs <= P.MAX_QUEUE_PAIRS:
            raise ValueError(f"queue_pairs must be 1..{P.MAX_QUEUE_PAIRS}")
        self.offered_features = features | F.bit(F.VHOST_USER_F_PROTOCOL_FEATURES)
        self.offered_protocol_features = protocol_features
        self.queue_pairs = queue_pairs
        self.num_vrings = 2 * queue_pairs  # one RX and one TX ring per pair
        self._stop_vring = stop_vring
        self._retired: list[int] = []
        self._out = bytearray()
        self._init_state()

    # --- public API ---
    def receive(self, data: bytes, fds: Sequence[int] = ()) -> list[Event]:
        """Feed bytes and the fds that came with them; return the device events."""
        self._close_retired()
        events: list[Event] = []
        try:
            self._codec.feed(data, fds)
            while (msg := self._codec.next_message()) is not None:
                self._handle(msg, events)
        except VhostUserError as e:
            self._codec.close()
            raise VhostUserError(str(e), events) from None
        return events

    def data_to_send(self) -> bytes:
        """Reply bytes produced so far (cleared on return)."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def bytes_wanted(self) -> int:
        """How many bytes to read next so a read never spans two messages."""
        return self._codec.bytes_wanted()

    def disconnect(self) -> list[Event]:
        """The front-end went away: stop rings, drop all state, await a new connection."""
        events: list[Event] = []
        self._reset_rings(events, keep_config=False)
        self._retired += [r.fd for r in self._regions]
        self._codec.close()
        self._init_state()
        self._out.clear()
        events.append(Reset(True))
        return events

    def release_retired(self) -> None:
        """Close the retired fds now, once the device no longer uses any of them.

        Call after handling disconnect()'s events: otherwise the fds of a VMM
        that is gone (its guest RAM memfd among them, which keeps all of that
        RAM allocated) stay open until the next front-end sends a message.
        """
        self._close_retired()

    def close(self) -> None:
        """Close every fd the Backend owns, without calling the device (teardown)."""
        for v in self._vrings:
            self._retired += v.fds()
        self._retired += [r.fd for r in self._regions]
        self._codec.close()
        self._init_state()
        self._close_retired()

    @property
    def acked_features(self) -> int:
        return self._acked

    @property
    def protocol_features(self) -> int:
        """Protocol features the front-end set (SET_PROTOCOL_FEATURES)."""
        return self._protocol

    @property
    def owner(self) -> bool:
        return self._owner

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(self._regions)

    def vring(self, index: int) -> VringConfig:
        """Snapshot of vring `index` (ready or not)."""
        return self._config(index)

    def vring_ready(self, index: int) -> bool:
        return self._vrings[index].ready

    # --- state ---
    def _init_state(self) -> None:
        self._codec = Codec()
        self._acked = 0
        self._features_set = False
        self._protocol = 0
        self._owner = False
        self._regions: list[MemoryRegion] = []
        self._vrings = [_Vring() for _ in range(self.num_vrings)]

    def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        close_fds(retired)

    def _owned_fds(self) -> set[int]:
        owned = {r.fd for r in self._regions} | set(self._retired)
        for v in self._vrings:
            owned.update(v.fds())
        return owned

    def _handle(self, msg: Message, events: list[Event]) -> None:
        handler, needs = _HANDLERS[msg.request]
        log.debug("%s body=%s fds=%s", msg.name, msg.body, msg.fds)
        try:
            if needs is not None and not self._protocol >> needs & 1:
                raise VhostUserError("needs protocol feature "
                                     f"{ProtocolFeature(needs).name}, not negotiated")
            result = handler(self, msg, events)
        except VhostUserError as e:
            owned = self._owned_fds()
            close_fds([fd for fd in msg.fds if fd not in owned])
            raise VhostUserError(f"{msg.name}: {e}") from None
        if isinstance(result, Reply):
            self._out += self._codec.send(result)
        elif msg.need_reply:
            self._out += self._codec.send(Reply.u64(msg.request, result))

    def _vring_at(self, index: int) -> _Vring:
        if not 0 <= index < self.num_vrings:
            raise VhostUserError(f"vring index {index} out of range 0..{self.num_vrings - 1}")
        return self._vrings[index]

    def _packed(self) -> bool:
        return F.has(self._acked, F.VIRTIO_F_RING_PACKED)

    def _config(self, index: int) -> VringConfig:
        v = self._vrings[index]
        a = v.addr or VringAddr(index, 0, 0, 0, 0, 0)
        return VringConfig(index, v.num or 0, a.desc_user_addr, a.avail_user_addr,
                           a.used_user_addr, v.base, v.kick_fd, v.call_fd, v.err_fd,
                           self._packed(), F.has(self._acked, F.VIRTIO_RING_F_EVENT_IDX))

    def _check_in_memory(self, index: int, regions: Sequence[MemoryRegion]) -> None:
        """Refuse a vring whose size or areas do not fit the rules and guest memory."""
        v = self._vrings[index]
        assert v.num is not None and v.addr is not None
        if not virtqueue.valid_queue_size(v.num, self._packed()):
            raise VhostUserError(f"vring {index}: size {v.num} invalid for this ring type")
        event_idx = F.has(self._acked, F.VIRTIO_RING_F_EVENT_IDX)
        for name, addr, size, align in P.vring_areas(v.addr, v.num, self._packed(), event_idx):
            if addr % align:
                raise VhostUserError(f"vring {index}: {name} at {addr:#x} not "
                                     f"{align}-byte aligned")
            if not any(r.contains_user(addr, size) for r in regions):
                raise VhostUserError(f"vring {index}: {name} [{addr:#x}, +{size:#x}) "
                                     "outside guest memory")

    def _update_ready(self, index: int, events: list[Event]) -> None:
        v = self._vrings[index]
        want = (v.started and v.enabled and self._features_set and v.num is not None
                and v.addr is not None and bool(self._regions))
        if want and not v.ready:
            self._check_in_memory(index, self._regions)
            v.ready = True
            log.info("vring %d ready", index)
            events.append(VringReady(index, self._config(index)))
        elif v.ready and not want:
            self._stop(index, events)

    def _update_all(self, events: list[Event]) -> None:
        for i in range(self.num_vrings):
            self._update_ready(i, events)

    def _stop(self, index: int, events: list[Event]) -> None:
        v = self._vrings[index]
        v.ready = False
        last = self._stop_vring(index) if self._stop_vring is not None else None
        if last is not None:
            if not isinstance(last, int) or not 0 <= last <= P.U32_MAX:
                raise ValueError(f"stop_vring({index}) returned {last!r}, not a u32")
            v.base = last
        log.info("vring %d stopped at %d", index, v.base)
        events.append(VringStopped(index, v.base))

    def _reset_rings(self, events: list[Event], keep_config: bool) -> None:
        for i, v in enumerate(self._vrings):
            if v.ready:
                self._stop(i, events)
            self._retired += v.fds()
            if keep_config:
                v.kick_fd = v.call_fd = v.err_fd = None
                v.started = v.enabled = False
            else:
                self._vrings[i] = _Vring()

    def _check_ready_rings(self, regions: Sequence[MemoryRegion]) -> None:
        for i, v in enumerate(self._vrings):
            if v.ready:
                self._check_in_memory(i, regions)

    # --- handlers: validate everything first, then change state ---
    def _get_features(self, msg: Message, events: list) -> Reply:
        return Reply.u64(msg.request, self.offered_features)

    def _set_features(self, msg: Message, events: list) -> int:
        acked = int(msg.body)  # type: ignore[call-overload]
        if acked & ~self.offered_features:
            raise VhostUserError(f"acks features not offered: "
                                 f"{F.names(acked & ~self.offered_features)}")
        if (acked ^ self._acked) & LAYOUT_FEATURES:
            for i, v in enumerate(self._vrings):
                if v.ready:
                    self._stop(i, events)
        self._acked = acked
        self._features_set = True
        if not F.has(acked, F.VHOST_USER_F_PROTOCOL_FEATURES):
            for v in self._vrings:
                v.enabled = True
        log.info("features acked: %s", " ".join(F.names(acked)))
        events.append(FeaturesChanged(acked))
        self._update_all(events)
        return 0

    def _set_owner(self, msg: Message, events: list) -> int:
        self._owner = True
        return 0

    def _reset_owner(self, msg: Message, events: list) -> int:
        self._reset_rings(events, keep_config=True)
        events.append(Reset(False))
        return 0

    def _reset_device(self, msg: Message, events: list) -> int:
        self._reset_rings(events, keep_config=False)
        self._retired += [r.fd for r in self._regions]
        self._regions = []
        self._acked = 0
        self._features_set = False
        events.append(Reset(True))
        return 0

    def _set_mem_table(self, msg: Message, events: list) -> int:
        regions: tuple[MemoryRegion, ...] = msg.body  # type: ignore[assignment]
        self._check_ready_rings(regions)
        old, self._regions = tuple(self._regions), list(regions)
        self._retired += [r.fd for r in old]
        events.append(MemTableChanged(regions, regions, old))
        self._update_all(events)
        return 0

    def _add_mem_reg(self, msg: Message, events: list) -> int:
        r: MemoryRegion = msg.body  # type: ignore[assignment]
        if len(self._regions) >= P.MAX_MEM_SLOTS:
            raise VhostUserError(f"more than {P.MAX_MEM_SLOTS} memory slots")
        P.check_no_overlap(self._regions + [r])
        self._regions.append(r)
        events.append(MemTableChanged(tuple(self._regions), (r,), ()))
        self._update_all(events)
        return 0

    def _rem_mem_reg(self, msg: Message, events: list) -> int:
        r: MemoryRegion = msg.body  # type: ignore[assignment]
        key = (r.guest_phys_addr, r.memory_size, r.userspace_addr)
        found = [x for x in self._regions
                 if (x.guest_phys_addr, x.memory_size, x.userspace_addr) == key]
        if not found:
            raise VhostUserError(f"no memory region at guest {r.guest_phys_addr:#x}")
        rest = [x for x in self._regions if x is not found[0]]
        self._check_ready_rings(rest)
        self._regions = rest
        self._retired.append(found[0].fd)
        events.append(MemTableChanged(tuple(rest), (), (found[0],)))
        return 0

    def _get_max_mem_slots(self, msg: Message, events: list) -> Reply:
        return Reply.u64(msg.request, P.MAX_MEM_SLOTS)

    def _set_vring_num(self, msg: Message, events: list) -> int:
        s: VringState = msg.body  # type: ignore[assignment]
        v = self._vring_at(s.index)
        if v.started:
            raise VhostUserError(f"vring {s.index} size change while started")
        if not virtqueue.valid_queue_size(s.num, self._packed()):
            raise VhostUserError(f"vring {s.index} size {s.num} invalid")
        v.num = s.num
        return 0

    def _set_vring_addr(self, msg: Message, events: list) -> int:
        a: VringAddr = msg.body  # type: ignore[assignment]
        v = self._vring_at(a.index)
        if v.ready:
            raise VhostUserError(f"vring {a.index} moved while running")
        if a.flags & P.VHOST_VRING_F_LOG:
            raise VhostUserError("dirty logging requested but VHOST_F_LOG_ALL not offered")
        v.addr = a
        self._update_ready(a.index, events)
        return 0

    def _set_vring_base(self, msg: Message, events: list) -> int:
        s: VringState = msg.body  # type: ignore[assignment]
        v = self._vring_at(s.index)
        if v.started:
            raise VhostUserError(f"vring {s.index} base change while started")
        if not self._packed() and s.num > SPLIT_BASE_MAX:
            raise VhostUserError(f"vring {s.index} base {s.num} over {SPLIT_BASE_MAX}")
        v.base = s.num
        return 0

    def _get_vring_base(self, msg: Message, events: list) -> Reply:
        s: VringState = msg.body  # type: ignore[assignment]
        v = self._vring_at(s.index)
        if v.ready:
            self._stop(s.index, events)
        v.started = False
        self._retired += v.fds()
        v.kick_fd = v.call_fd = v.err_fd = None
        return Reply.vring_state(msg.request, s.index, v.base)

    def _set_vring_fd(self, msg: Message, events: list) -> int:
        f: VringFile = msg.body  # type: ignore[assignment]
        v = self._vring_at(f.index)
        fd = None if f.nofd else msg.fds[0]
        attr = {Request.SET_VRING_KICK: "kick_fd", Request.SET_VRING_CALL: "call_fd",
                Request.SET_VRING_ERR: "err_fd"}[msg.request]
        old = getattr(v, attr)
        if old is not None:
            self._retired.append(old)
        setattr(v, attr, fd)
        if msg.request == Request.SET_VRING_KICK:
            v.started = True
        if v.ready:
            events.append(VringFdsChanged(f.index, v.kick_fd, v.call_fd, v.err_fd))
        else:
            self._update_ready(f.index, events)
        return 0

    def _get_protocol_features(self, msg: Message, events: list) -> Reply:
        return Reply.u64(msg.request, self.offered_protocol_features)

    def _set_protocol_features(self, msg: Message, events: list) -> int:
        pf = int(msg.body)  # type: ignore[call-overload]
        extra = pf & ~self.offered_protocol_features
        if extra:
            raise VhostUserError(f"sets protocol features not offered: "
                                 f"{P.protocol_feature_names(extra)}")
        self._protocol = pf
        log.info("protocol features: %s", " ".join(P.protocol_feature_names(pf)))
        return 0

    def _get_queue_num(self, msg: Message, events: list) -> Reply:
        # vhost-user-net front-ends (QEMU, DPDK) read this as queue *pairs*.
        return Reply.u64(msg.request, self.queue_pairs)

    def _set_vring_enable(self, msg: Message, events: list) -> int:
        s: VringState = msg.body  # type: ignore[assignment]
        v = self._vring_at(s.index)
        if s.num not in (0, 1):
            raise VhostUserError(f"vring {s.index} enable value {s.num} not 0 or 1")
        v.enabled = bool(s.num)
        self._update_ready(s.index, events)
        return 0

    def _net_set_mtu(self, msg: Message, events: list) -> int:
        mtu = int(msg.body)  # type: ignore[call-overload]
        if not P.MTU_MIN <= mtu <= P.MTU_MAX:
            log.warning("front-end MTU %d outside %d..%d refused", mtu, P.MTU_MIN, P.MTU_MAX)
            return 1
        events.append(MtuChanged(mtu))
        return 0


# Dispatch table indexed by request: handler and the protocol feature it needs.
_HANDLERS: dict[Request, tuple[Handler, int | None]] = {
    Request.GET_FEATURES: (Backend._get_features, None),
    Request.SET_FEATURES: (Backend._set_features, None),
    Request.SET_OWNER: (Backend._set_owner, None),
    Request.RESET_OWNER: (Backend._reset_owner, None),
    Request.SET_MEM_TABLE: (Backend._set_mem_table, None),
    Request.SET_VRING_NUM: (Backend._set_vring_num, None),
    Request.SET_VRING_ADDR: (Backend._set_vring_addr, None),
    Request.SET_VRING_BASE: (Backend._set_vring_base, None),
    Request.GET_VRING_BASE: (Backend._get_vring_base, None),
    Request.SET_VRING_KICK: (Backend._set_vring_fd, None),
    Request.SET_VRING_CALL: (Backend._set_vring_fd, None),
    Request.SET_VRING_ERR: (Backend._set_vring_fd, None),
    Request.GET_PROTOCOL_FEATURES: (Backend._get_protocol_features, None),
    Request.SET_PROTOCOL_FEATURES: (Backend._set_protocol_features, None),
    Request.GET_QUEUE_NUM: (Backend._get_queue_num, None),
    Request.SET_VRING_ENABLE: (Backend._set_vring_enable, None),
    Request.NET_SET_MTU: (Backend._net_set_mtu, PF.NET_MTU),
    Request.RESET_DEVICE: (Backend._reset_device, PF.RESET_DEVICE),
    Request.GET_MAX_MEM_SLOTS: (Backend._get_max_mem_slots, PF.CONFIGURE_MEM_SLOTS),
    Request.ADD_MEM_REG: (Backend._add_mem_reg, PF.CONFIGURE_MEM_SLOTS),
    Request.REM_MEM_REG: (Backend._rem_mem_reg, PF.CONFIGURE_MEM_SLOTS),
}
