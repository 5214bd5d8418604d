"""The oracle harness itself (tests/netns.py): namespaces entered and left
cleanly, removed afterwards, and the tap pair forwarding frames unchanged."""

from __future__ import annotations

import os

import pktlib as P
import pytest
from netns import (
    NETNS_RUN_DIR,
    SYSCTLS_BRIDGE_NF,
    SYSCTLS_IPV6_OFF,
    NetNS,
    TapPair,
    tap_pair,
)

from vmdnet.offload import VnetHdr


def _ns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_entered_switches_and_restores_even_on_error() -> None:
    before = _ns_inode()
    with NetNS("harness") as ns:
        with ns.entered():
            inside = _ns_inode()
        assert inside != before and _ns_inode() == before
        with pytest.raises(RuntimeError), ns.entered():
            raise RuntimeError("boom")
        assert _ns_inode() == before
        name = ns.name
        assert name.startswith(f"vn-harness-{os.getpid()}-")
        assert os.path.exists(os.path.join(NETNS_RUN_DIR, name))
    assert not os.path.exists(os.path.join(NETNS_RUN_DIR, name))


def test_tap_pair_cleans_up_after_an_error() -> None:
    with pytest.raises(RuntimeError), tap_pair("harness") as p:
        name = p.ns.name
        raise RuntimeError("boom")
    assert not os.path.exists(os.path.join(NETNS_RUN_DIR, name))


def test_plain_frame_crosses_unchanged(pair: TapPair) -> None:
    frame = P.eth(src=pair.next_mac(), ethertype=0x88B6) + bytes(range(100))
    assert pair.kernel_segment(VnetHdr(), frame) == [frame]


def test_frame_from_another_mac_is_not_collected(pair: TapPair) -> None:
    """A frame that is not the case's (other source MAC) is counted as stray."""
    other = P.eth(src=pair.next_mac(), ethertype=0x88B6) + bytes(50)
    mine = P.eth(src=pair.next_mac(), ethertype=0x88B6) + bytes(60)
    stray = pair.stray
    pair.drain()
    os.write(pair.a.fd, bytes(12) + other)
    os.write(pair.a.fd, bytes(12) + mine)
    token = pair._write_fence(mine[6:12])
    assert pair._collect(mine[6:12], token, 5.0) == [mine]
    assert pair.stray == stray + 1


def test_refused_write_reports_errno(pair: TapPair) -> None:
    frame = P.eth(src=pair.next_mac(), ethertype=0x88B6) + bytes(50)
    assert pair.kernel_accepts(VnetHdr(hdr_len=5), frame) == 22      # EINVAL
    with pytest.raises(OSError):
        pair.kernel_segment(VnetHdr(hdr_len=5), frame)
    assert pair.kernel_accepts(VnetHdr(), frame) == 0


def test_namespace_is_quiet_and_bridge_netfilter_off(pair: TapPair) -> None:
    with pair.ns.entered():
        for key, value in SYSCTLS_IPV6_OFF + SYSCTLS_BRIDGE_NF:
            try:
                with open(f"/proc/sys/{key}") as f:
                    assert f.read().strip() == value, key
            except FileNotFoundError:
                assert key.startswith("net/bridge/"), key   # br_netfilter not loaded
