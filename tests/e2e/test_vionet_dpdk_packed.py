"""vionet with packed virtqueues, driven by DPDK's net_virtio_user with ``packed_vq=1``.

The same bench as tests/e2e/test_vionet_dpdk.py (namespace, bridge, tap B as
the kernel oracle; its fixtures and traffic helpers are reused), with the
guest's virtio_user port asking for VIRTIO_F_RING_PACKED, which vionet
offers.  vionet's log must show its rings started as packed ones, then:

* TX: 64 B and 1514 B frames (TCP/UDP, IPv4/IPv6) from the guest arrive on
  tap B byte for byte, many times around the 256-slot ring (so both wrap
  counters flip many times), nothing dropped;
* RX: the same sizes written into tap B reach the guest byte for byte;
* TSO (passthrough): super-frames the guest hands over as GSO packets arrive
  cut at MSS with valid checksums.
* the split-ring regressions re-run on packed rings (passthrough): a guest
  killed mid-traffic and the next one served (rings stopped and restarted,
  GET_VRING_BASE with the wrap counter), an RX packet parked until a stalled
  guest polls again, one larger than the guest's whole 16-slot ring dropped.

Run for the vnet-header passthrough mode and for the software path
(``--no-vnet-hdr``).  Skips only when dpdk-testpmd, root or /dev/net/tun is
missing (the bench fixture decides).
"""

from __future__ import annotations

import functools
import logging

import dpdklib as d
import pytest
import test_vionet_dpdk as vd
from test_vionet_dpdk import bench, vionet  # noqa: F401  (fixtures)

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Fewer than the split-ring tests: enough for 40 passes over a 256-slot ring.
PACKED_TX_FRAMES = 10000
PACKED_RX_FRAMES = 1000
PACKED_TSO_FRAMES = 10
PACKED_STARTED = "packed) started"
MODES = ["passthrough", "no-vnet-hdr"]


@pytest.fixture
def packed_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every VirtioUser the shared helpers start asks for a packed ring."""
    monkeypatch.setattr(d, "VirtioUser", functools.partial(d.VirtioUser, packed=True))


def assert_packed(v: vd.Vionet) -> None:
    text = v.log()
    assert text.count(PACKED_STARTED) >= 2, f"vionet started no packed rings:\n{text}"
    assert "split) started" not in text, text


@pytest.mark.parametrize("vionet", MODES, indirect=True)
def test_packed_tx_frames_arrive_exactly(bench: vd.Bench, vionet: vd.Vionet,  # noqa: F811
                                         packed_guest: None) -> None:
    kinds = vd.small_frames()
    frames = [kinds[i % len(kinds)] for i in range(PACKED_TX_FRAMES)]
    r = vd.guest_tx(bench, vionet, frames, len(frames))
    assert_packed(vionet)
    log.warning("%s packed TX: %d frames in %.2f s", vionet.mode, len(frames), r.elapsed)
    assert r.sent == len(frames)
    problem = vd.mismatch(r.arrived, frames)
    assert problem is None, f"{problem}; vionet {r.stats}"
    assert r.stats["packets"] == len(frames) and r.stats["chains"] == len(frames), r.stats
    assert not r.drops, r.drops


@pytest.mark.parametrize("vionet", MODES, indirect=True)
def test_packed_rx_frames_reach_the_guest(bench: vd.Bench, vionet: vd.Vionet,  # noqa: F811
                                          packed_guest: None) -> None:
    kinds = vd.small_frames(to_guest=True)
    frames = [kinds[i % len(kinds)] for i in range(PACKED_RX_FRAMES)]
    bursts = [(frames[i:i + vd.RX_BURST], len(frames[i:i + vd.RX_BURST]))
              for i in range(0, len(frames), vd.RX_BURST)]
    r = vd.guest_rx(bench, vionet, bursts)
    assert_packed(vionet)
    assert r.res.port.rx_packets == len(frames), r.res.port
    problem = vd.mismatch(r.res.frames, frames)
    assert problem is None, f"to the guest: {problem}"
    assert r.stats["packets"] == len(frames), r.stats
    assert not r.drops, r.drops


@pytest.mark.parametrize("vionet", ["passthrough"], indirect=True)
def test_packed_tx_tso(bench: vd.Bench, vionet: vd.Vionet,  # noqa: F811
                       packed_guest: None) -> None:
    frames = [vd.superframe(v6=bool(i % 2), seq=1000 + i * 100_000)
              for i in range(PACKED_TSO_FRAMES)]
    wire = [vd.tso_expectation(f) for f in frames]
    r = vd.guest_tx(bench, vionet, frames, sum(wire), tso=True)
    assert_packed(vionet)
    assert len(r.arrived) == sum(wire), f"{len(r.arrived)} of {sum(wire)}; vionet {r.stats}"
    pos = 0
    for f, k in zip(frames, wire, strict=True):
        vd.check_segments(f, r.arrived[pos:pos + k])
        pos += k
    assert r.stats["tso_passthrough"] == len(frames), r.stats
    assert not r.drops, r.drops


# The split-ring regressions that stop, restart and starve rings, on packed rings:
# GET_VRING_BASE / SET_VRING_BASE with wrap counters across a killed guest, and
# RX packets parked for guest buffers (chain counts, kick requests).

@pytest.mark.parametrize("vionet", ["passthrough"], indirect=True)
def test_packed_reconnect_after_testpmd_is_killed(bench: vd.Bench,  # noqa: F811
                                                  vionet: vd.Vionet,  # noqa: F811
                                                  packed_guest: None) -> None:
    vd.test_reconnect_after_testpmd_is_killed(bench, vionet)
    assert_packed(vionet)


@pytest.mark.parametrize("vionet", ["passthrough"], indirect=True)
def test_packed_rx_packet_waiting_for_buffers(bench: vd.Bench, vionet: vd.Vionet,  # noqa: F811
                                              packed_guest: None) -> None:
    vd.test_rx_packet_waiting_for_buffers(bench, vionet)
    assert_packed(vionet)


@pytest.mark.parametrize("vionet", ["passthrough"], indirect=True)
def test_packed_rx_packet_larger_than_the_whole_ring(bench: vd.Bench,  # noqa: F811
                                                     vionet: vd.Vionet,  # noqa: F811
                                                     packed_guest: None) -> None:
    vd.test_rx_packet_larger_than_the_whole_ring(bench, vionet)
    assert_packed(vionet)
