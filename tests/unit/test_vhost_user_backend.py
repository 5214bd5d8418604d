"""vhost-user Backend and Codec fed constructed byte sequences (frames built from the spec
in test_vhost_user_frames), whole and one byte at a time; replies, events, fd ownership."""

from __future__ import annotations

import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import test_vhost_user_frames as fr  # noqa: E402

from vmdnet.vhost_user import (  # noqa: E402
    Backend,
    Codec,
    FeaturesChanged,
    MemTableChanged,
    MtuChanged,
    Reply,
    Reset,
    VhostUserError,
    VringFdsChanged,
    VringReady,
    VringStopped,
)
from vmdnet.vhost_user import protocol as P  # noqa: E402
from vmdnet.virtio import features as F  # noqa: E402

OFFER = F.bit(F.VIRTIO_F_VERSION_1) | F.bit(F.VIRTIO_NET_F_MRG_RXBUF) | F.bit(
    F.VIRTIO_RING_F_EVENT_IDX) | F.bit(F.VIRTIO_NET_F_CSUM)


class Device:
    """Stands in for vionet's stop_vring: records calls, returns a chosen last_avail_idx."""

    def __init__(self, last_avail: int | None = 7) -> None:
        self.last_avail = last_avail
        self.stopped: list[int] = []

    def stop_vring(self, index: int) -> int | None:
        self.stopped.append(index)
        return self.last_avail


def feed_all(b: Backend, seq: list[tuple[bytes, list[int]]], bytewise: bool = False) -> list:
    events = []
    for data, fds in seq:
        if bytewise:
            for i in range(len(data)):
                events += b.receive(data[i:i + 1], fds if i == 0 else [])
        else:
            events += b.receive(data, fds)
    return events


def fd_labels(seq: list[tuple[bytes, list[int]]]) -> dict[int, str]:
    return {fd: f"fd{n}" for n, fd in enumerate(fd for _, fds in seq for fd in fds)}


def normalize(obj: object, labels: dict[int, str]) -> object:
    """Events with fds replaced by their position in the sequence (fd numbers differ per run)."""
    if isinstance(obj, tuple):
        return tuple(normalize(x, labels) for x in obj)
    if hasattr(obj, "__dataclass_fields__"):
        fields = {k: getattr(obj, k) for k in obj.__dataclass_fields__}
        out = {}
        for k, v in fields.items():
            if k.endswith("fd") and isinstance(v, int):
                out[k] = labels.get(v, v)
            else:
                out[k] = normalize(v, labels)
        return (type(obj).__name__, out)
    return obj


def run_handshake(bytewise: bool = False, **kw: object) -> tuple[Backend, list, bytes, dict]:
    b = Backend(OFFER, stop_vring=Device().stop_vring)
    seq = fr.handshake(**kw)  # type: ignore[arg-type]
    events = feed_all(b, seq, bytewise)
    return b, events, b.data_to_send(), fd_labels(seq)


@pytest.fixture
def no_fd_leak():
    before = fr.open_fds()
    yield
    assert fr.open_fds() - before == set(), "fds leaked"


def test_handshake_replies_and_events(no_fd_leak) -> None:
    b, events, out, labels = run_handshake()
    replies = fr.parse_replies(out)
    offered = OFFER | fr.F_PROTOCOL_FEATURES
    assert replies[0] == (fr.GET_FEATURES, fr.VERSION | fr.REPLY, struct.pack("=Q", offered))
    assert replies[1] == (fr.GET_PROTOCOL_FEATURES, 5,
                          struct.pack("=Q", fr.PF_MQ | fr.PF_REPLY_ACK | fr.PF_NET_MTU
                                      | fr.PF_RESET_DEVICE))
    assert replies[2] == (fr.GET_QUEUE_NUM, 5, struct.pack("=Q", 1))
    # need_reply on SET_FEATURES and SET_MEM_TABLE: u64 0 acks, nothing else.
    assert replies[3:] == [(fr.SET_FEATURES, 5, bytes(8)), (fr.SET_MEM_TABLE, 5, bytes(8))]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["FeaturesChanged", "MemTableChanged", "VringReady", "VringReady"]
    assert events[0] == FeaturesChanged(fr.F_VERSION_1 | fr.F_MRG_RXBUF | fr.F_PROTOCOL_FEATURES)
    (region,) = events[1].regions
    assert (region.guest_phys_addr, region.memory_size, region.userspace_addr) == (
        fr.GPA, fr.MEM_SIZE, fr.UVA)
    assert labels[region.fd] == "fd0" and events[1].added == events[1].regions
    ready = events[2].vring
    desc, used, avail = fr.ring_addrs(0)
    assert (ready.index, ready.num, ready.desc_user_addr, ready.avail_user_addr,
            ready.used_user_addr, ready.base) == (0, fr.QUEUE_SIZE, desc, avail, used, 0)
    assert (labels[ready.kick_fd], labels[ready.call_fd], ready.err_fd) == ("fd1", "fd2", None)
    assert b.owner and b.protocol_features == fr.PF_MQ | fr.PF_REPLY_ACK
    b.close()


def test_same_events_whole_and_bytewise(no_fd_leak) -> None:
    b1, ev1, out1, lab1 = run_handshake()
    b2, ev2, out2, lab2 = run_handshake(bytewise=True)
    assert normalize(tuple(ev1), lab1) == normalize(tuple(ev2), lab2)
    assert out1 == out2
    b1.close()
    b2.close()


def test_fdless_stream_in_one_chunk_same_as_per_message() -> None:
    msgs = [fr.frame(fr.GET_FEATURES), fr.frame(fr.SET_OWNER),
            fr.u64(fr.SET_FEATURES, fr.F_VERSION_1, fr.VERSION | fr.NEED_REPLY),
            fr.state(fr.SET_VRING_NUM, 1, 64), fr.frame(fr.GET_QUEUE_NUM)]
    a, b = Backend(OFFER), Backend(OFFER)
    ev_a = a.receive(b"".join(msgs))
    ev_b = [e for m in msgs for e in b.receive(m)]
    assert ev_a == ev_b == [FeaturesChanged(fr.F_VERSION_1)]
    assert a.data_to_send() == b.data_to_send()


def test_get_vring_base_stops_and_replies_device_index(no_fd_leak) -> None:
    dev = Device(last_avail=42)
    b = Backend(OFFER, stop_vring=dev.stop_vring)
    feed_all(b, fr.handshake())
    b.data_to_send()
    kick = b.vring(0).kick_fd
    events = b.receive(fr.state(fr.GET_VRING_BASE, 0, 0))
    assert events == [VringStopped(0, 42)] and dev.stopped == [0]
    assert fr.parse_replies(b.data_to_send()) == [(fr.GET_VRING_BASE, 5, struct.pack("=II", 0, 42))]
    assert not b.vring_ready(0) and b.vring(0).kick_fd is None
    assert kick in fr.open_fds()  # retired fds stay open until the next receive()
    b.receive(b"")
    assert kick not in fr.open_fds()
    # Restart from the returned base: new kick, ring ready again at base 42.
    events = b.receive(fr.u64(fr.SET_VRING_KICK, 0), [fr.eventfd()])
    assert [type(e) for e in events] == [VringReady] and events[0].vring.base == 42
    b.close()


def test_stop_vring_none_keeps_base_and_not_started_ring_replies_base() -> None:
    b = Backend(OFFER, stop_vring=Device(last_avail=None).stop_vring)
    b.receive(fr.state(fr.SET_VRING_BASE, 1, 9))
    b.receive(fr.state(fr.GET_VRING_BASE, 1, 0))
    assert fr.parse_replies(b.data_to_send()) == [(fr.GET_VRING_BASE, 5, struct.pack("=II", 1, 9))]


def test_without_protocol_features_ring_starts_at_kick(no_fd_leak) -> None:
    b = Backend(OFFER)
    seq = [s for s in fr.handshake(features=fr.F_VERSION_1) if s[0][0] != fr.SET_VRING_ENABLE]
    events = feed_all(b, seq)
    ready = [e.index for e in events if isinstance(e, VringReady)]
    assert ready == [0, 1]
    # The call fd arrives after the kick (QEMU's order): the ready ring learns it.
    assert any(isinstance(e, VringFdsChanged) and e.call_fd is not None for e in events)
    b.close()


def test_enable_zero_stops_and_one_restarts(no_fd_leak) -> None:
    dev = Device(last_avail=3)
    b = Backend(OFFER, stop_vring=dev.stop_vring)
    feed_all(b, fr.handshake())
    assert b.receive(fr.state(fr.SET_VRING_ENABLE, 1, 0)) == [VringStopped(1, 3)]
    (ev,) = b.receive(fr.state(fr.SET_VRING_ENABLE, 1, 1))
    assert isinstance(ev, VringReady) and ev.vring.base == 3
    b.close()


def test_reply_ack_only_on_need_reply() -> None:
    b = Backend(OFFER)
    b.receive(fr.frame(fr.SET_OWNER))
    assert b.data_to_send() == b""
    b.receive(fr.frame(fr.SET_OWNER, flags=fr.VERSION | fr.NEED_REPLY))
    assert fr.parse_replies(b.data_to_send()) == [(fr.SET_OWNER, 5, bytes(8))]


def test_net_set_mtu() -> None:
    b = Backend(OFFER)
    with pytest.raises(VhostUserError, match="NET_MTU"):
        b.receive(fr.u64(fr.NET_SET_MTU, 1500))
    b = Backend(OFFER)
    b.receive(fr.u64(fr.SET_PROTOCOL_FEATURES, fr.PF_NET_MTU | fr.PF_REPLY_ACK))
    assert b.receive(fr.u64(fr.NET_SET_MTU, 1500, fr.VERSION | fr.NEED_REPLY)) == [
        MtuChanged(1500)]
    assert b.receive(fr.u64(fr.NET_SET_MTU, 20, fr.VERSION | fr.NEED_REPLY)) == []
    assert [r[2] for r in fr.parse_replies(b.data_to_send())] == [
        struct.pack("=Q", 0), struct.pack("=Q", 1)]


def test_call_fd_change_on_ready_ring(no_fd_leak) -> None:
    b = Backend(OFFER)
    feed_all(b, fr.handshake())
    old = b.vring(1).call_fd
    new = fr.eventfd()
    assert b.receive(fr.u64(fr.SET_VRING_CALL, 1), [new]) == [
        VringFdsChanged(1, b.vring(1).kick_fd, new, None)]
    b.receive(b"")
    assert old not in fr.open_fds()
    assert b.receive(fr.u64(fr.SET_VRING_CALL, 1 | fr.NOFD)) == [
        VringFdsChanged(1, b.vring(1).kick_fd, None, None)]
    b.close()


def test_layout_feature_change_restarts_rings(no_fd_leak) -> None:
    b = Backend(OFFER, stop_vring=Device(5).stop_vring)
    feed_all(b, fr.handshake())
    acked = fr.F_VERSION_1 | fr.F_PROTOCOL_FEATURES | fr.F_EVENT_IDX
    events = b.receive(fr.u64(fr.SET_FEATURES, acked))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["VringStopped", "VringStopped", "FeaturesChanged", "VringReady", "VringReady"]
    assert events[3].vring.event_idx and events[3].vring.base == 5
    b.close()


def test_disconnect_stops_rings_then_new_session(no_fd_leak) -> None:
    dev = Device(11)
    b = Backend(OFFER, stop_vring=dev.stop_vring)
    feed_all(b, fr.handshake())
    assert b.disconnect() == [VringStopped(0, 11), VringStopped(1, 11), Reset(True)]
    assert b.acked_features == 0 and b.regions == () and not b.owner
    events = feed_all(b, fr.handshake())
    assert [e.index for e in events if isinstance(e, VringReady)] == [0, 1]
    b.close()


def test_reset_owner_keeps_memory_reset_device_clears(no_fd_leak) -> None:
    b = Backend(OFFER)
    feed_all(b, fr.handshake())
    events = b.receive(fr.frame(fr.RESET_OWNER))
    assert [type(e) for e in events] == [VringStopped, VringStopped, Reset]
    assert events[-1] == Reset(False) and len(b.regions) == 1
    assert b.vring(0).kick_fd is None and b.vring(0).num == fr.QUEUE_SIZE
    with pytest.raises(VhostUserError, match="RESET_DEVICE"):
        b.receive(fr.frame(fr.RESET_DEVICE))
    b.close()
    b = Backend(OFFER)
    feed_all(b, fr.handshake(protocol=fr.PF_RESET_DEVICE))
    events = b.receive(fr.frame(fr.RESET_DEVICE))
    assert events[-1] == Reset(True) and b.regions == () and b.acked_features == 0
    b.close()


def test_mem_slots(no_fd_leak) -> None:
    b = Backend(OFFER, protocol_features=fr.PF_MQ | fr.PF_REPLY_ACK | fr.PF_CONFIGURE_MEM_SLOTS)
    b.receive(fr.u64(fr.SET_PROTOCOL_FEATURES, fr.PF_CONFIGURE_MEM_SLOTS))
    b.receive(fr.frame(fr.GET_MAX_MEM_SLOTS))
    assert fr.parse_replies(b.data_to_send()) == [
        (fr.GET_MAX_MEM_SLOTS, 5, struct.pack("=Q", P.MAX_MEM_SLOTS))]
    (ev,) = b.receive(fr.single_region(fr.ADD_MEM_REG, 0, 0x10000, fr.UVA), [fr.memfd(0x10000)])
    assert isinstance(ev, MemTableChanged) and len(ev.added) == 1 and ev.removed == ()
    b.receive(fr.single_region(fr.ADD_MEM_REG, 0x10000, 0x10000, fr.UVA + 0x10000),
              [fr.memfd(0x10000)])
    stray = fr.eventfd()  # the spec lets REM_MEM_REG carry one fd, to be closed
    (ev,) = b.receive(fr.single_region(fr.REM_MEM_REG, 0, 0x10000, fr.UVA), [stray])
    assert [r.guest_phys_addr for r in ev.regions] == [0x10000] and len(ev.removed) == 1
    assert stray not in fr.open_fds()
    with pytest.raises(VhostUserError, match="overlap"):
        b.receive(fr.single_region(fr.ADD_MEM_REG, 0x18000, 0x10000, fr.UVA + 0x90000),
                  [fr.memfd(0x10000)])
    b.close()


def test_mem_slots_need_protocol_feature(no_fd_leak) -> None:
    b = Backend(OFFER)
    with pytest.raises(VhostUserError, match="CONFIGURE_MEM_SLOTS"):
        b.receive(fr.single_region(fr.ADD_MEM_REG, 0, 0x1000, fr.UVA), [fr.memfd(0x1000)])
    b.close()


def test_error_carries_events_before_it_and_backend_stays_failed(no_fd_leak) -> None:
    b = Backend(OFFER)
    data = fr.u64(fr.SET_FEATURES, fr.F_VERSION_1) + fr.frame(99)
    with pytest.raises(VhostUserError) as info:
        b.receive(data)
    assert info.value.events == [FeaturesChanged(fr.F_VERSION_1)]
    fd = fr.eventfd()
    with pytest.raises(VhostUserError, match="already failed"):
        b.receive(fr.u64(fr.SET_VRING_KICK, 0), [fd])
    assert fd not in fr.open_fds()
    b.disconnect()
    assert b.receive(fr.frame(fr.GET_QUEUE_NUM)) == []  # usable again after disconnect()
    b.close()


def test_constructor_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError):
        Backend(F.bit(F.VHOST_F_LOG_ALL))
    with pytest.raises(ValueError):
        Backend(OFFER, protocol_features=1 << 1)  # LOG_SHMFD
    with pytest.raises(ValueError):
        Backend(OFFER, queue_pairs=P.MAX_QUEUE_PAIRS + 1)


def test_codec_bytes_wanted_and_messages() -> None:
    c = Codec()
    assert c.bytes_wanted() == 12
    data = fr.state(fr.SET_VRING_NUM, 1, 256)
    assert c.receive(data[:5]) == [] and c.bytes_wanted() == 7
    assert c.receive(data[5:12]) == [] and c.bytes_wanted() == 8
    (msg,) = c.receive(data[12:])
    assert msg.name == "VHOST_USER_SET_VRING_NUM" and msg.body == P.VringState(1, 256)
    assert not msg.need_reply and c.bytes_wanted() == 12
    assert c.send(Reply.u64(1, 5)) == struct.pack("=IIIQ", 1, 5, 8, 5)
    assert c.send(Reply.vring_state(11, 1, 9)) == struct.pack("=IIIII", 11, 5, 8, 1, 9)
