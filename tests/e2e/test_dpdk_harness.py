"""The DPDK harness (tests/dpdklib.py) proven against DPDK alone.

DPDK's own vhost-user pair stands in for nothing here: net_virtio_user (a guest
driver) talks to net_vhost (DPDK's C backend) so that every helper vionet's
tests will use is shown to work, and every DPDK fact the harness relies on
(see the dpdklib docstring) is checked against the real thing.  No network
device is touched: the processes meet on unix sockets in a private directory
and read and write pcap files.

Needs root and dpdk-testpmd; skips with the reason otherwise.  The pcap and
frame helpers at the top run anywhere.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dpdklib as d
import pktlib
import pytest

NO_DPDK = d.dpdk_available()
needs_dpdk = pytest.mark.skipif(NO_DPDK is not None, reason=NO_DPDK or "")

# Bounded traffic: stop generators once the receiver counted this many.
TXONLY_PACKETS = 20000
# Generous: two busy-polling processes share 2 cores with other people's work.
WAIT = 30.0
# Feature bits virtio_user must never ask for, whatever the backend offers.
NEVER_REQUESTED = {"RING_EVENT_IDX", "GUEST_UFO", "HOST_UFO", "GUEST_USO4", "GUEST_USO6",
                   "HOST_USO", "GUEST_ECN", "HOST_ECN"}
# What virtio_user asks for with no offloads enabled (DPDK 22.11, split ring).
BASE_FEATURES = {"VERSION_1", "MRG_RXBUF", "RING_INDIRECT_DESC", "IN_ORDER"}
TX_OFFLOAD_FEATURES = {"CSUM", "HOST_TSO4", "HOST_TSO6"}
RX_OFFLOAD_FEATURES = {"GUEST_CSUM", "GUEST_TSO4", "GUEST_TSO6"}


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private directory for vhost-user sockets (sun_path is 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="vn-dpdk-") as name:
        yield Path(name)


# -- pcap and frame helpers (no DPDK needed) ------------------------------------

def _l4_ok(frame: bytes) -> bool:
    """Recompute the L4 checksum with pktlib's reference: a correct one sums to 0xffff."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800:
        ihl = (frame[14] & 0xF) * 4
        proto, src, dst = frame[23], frame[26:30], frame[30:34]
        l4 = frame[14 + ihl:14 + struct.unpack_from("!H", frame, 16)[0]]
        version = 4
    else:
        proto, src, dst = frame[20], frame[22:38], frame[38:54]
        l4 = frame[54:54 + struct.unpack_from("!H", frame, 18)[0]]
        version = 6
    return pktlib.ref_checksum(l4, pktlib.pseudo_sum(version, src, dst, proto, len(l4))) == 0xFFFF


@pytest.mark.parametrize("build,length", [
    (lambda: d.tcp_frame(64), 64), (lambda: d.tcp_frame(1514), 1514),
    (lambda: d.tcp_frame(1514, v6=True), 1514), (lambda: d.udp_frame(64), 64),
    (lambda: d.udp_frame(1514, v6=True), 1514),
    (lambda: d.tcp_superframe(), 14 + 20 + 20 + d.TSO_MSS * d.TSO_SEGMENTS),
    (lambda: d.tcp_superframe(v6=True), 14 + 40 + 20 + d.TSO_MSS * d.TSO_SEGMENTS),
])
def test_frames_have_exact_size_and_valid_checksums(build, length) -> None:
    frame = build()
    assert len(frame) == length
    assert _l4_ok(frame)
    assert not _l4_ok(frame[:-1] + bytes([frame[-1] ^ 1]))  # the check can fail


def test_frames_use_test_addresses_only() -> None:
    for frame in (d.tcp_frame(64), d.udp_frame(64, v6=True)):
        if frame[12:14] == b"\x08\x00":
            addrs = [frame[26:30], frame[30:34]]
            net = ipaddress.ip_network("198.18.0.0/15")
        else:
            addrs = [frame[22:38], frame[38:54]]
            net = ipaddress.ip_network("fd00::/8")
        assert all(ipaddress.ip_address(a) in net for a in addrs)


def test_superframe_too_big_for_ip_is_refused() -> None:
    with pytest.raises(ValueError):
        d.tcp_superframe(segments=46)


def test_pcap_round_trip_and_repeat(tmp_path: Path) -> None:
    frames = [d.tcp_frame(64, seq=1), d.tcp_superframe(), d.udp_frame(100, v6=True)]
    assert d.write_pcap(tmp_path / "a.pcap", frames) == 3
    assert d.read_pcap(tmp_path / "a.pcap") == frames
    assert d.repeat_pcap(tmp_path / "a.pcap", tmp_path / "b.pcap", 7) == 7
    assert d.read_pcap(tmp_path / "b.pcap") == [frames[i % 3] for i in range(7)]
    assert d.write_pcap(tmp_path / "e.pcap", []) == 0
    assert d.read_pcap(tmp_path / "e.pcap") == []


def test_read_pcap_refuses_truncated_records(tmp_path: Path) -> None:
    d.write_pcap(tmp_path / "a.pcap", [d.tcp_frame(100)])
    data = bytearray((tmp_path / "a.pcap").read_bytes())
    struct.pack_into("<I", data, 24 + 12, 200)  # wire length larger than captured
    (tmp_path / "t.pcap").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="captured 100 of 200"):
        d.read_pcap(tmp_path / "t.pcap")
    assert len(d.read_pcap(tmp_path / "t.pcap", allow_truncated=True)[0]) == 100
    (tmp_path / "c.pcap").write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="truncated record"):
        d.read_pcap(tmp_path / "c.pcap")


def test_feature_names() -> None:
    assert d.feature_names(0x950008000) == BASE_FEATURES | {"PROTOCOL_FEATURES"}
    assert d.feature_names(1 << 58) == {"BIT58"}


# -- testpmd itself --------------------------------------------------------------

@needs_dpdk
def test_close_escalates_to_kill_and_cleans_up(tmp_path: Path) -> None:
    """A testpmd that no longer answers is ended by PID and its runtime dir removed."""
    pmd = d.TestPmd(["net_null0"], tag="kill", main_lcore=1, log_dir=tmp_path)
    runtime = d.DPDK_RUNTIME_DIR / pmd.prefix
    assert runtime.is_dir()
    assert pmd.port_ids() == {"net_null0": 0}
    os.kill(pmd.proc.pid, signal.SIGSTOP)  # ignores quit and SIGTERM from now on
    rc = pmd.close(quit_timeout=1, term_timeout=2)
    assert rc == -signal.SIGKILL
    assert not runtime.exists()
    assert pmd.log_path.read_bytes().startswith(b"# ")


@needs_dpdk
def test_startup_failure_is_reported(sockdir: Path, tmp_path: Path) -> None:
    """A client virtio_user with no backend fails to probe; testpmd still prompts."""
    with pytest.raises(d.DpdkError, match="No probed ethernet devices|failed to initialize"):
        d.TestPmd([d.virtio_user_vdev(sockdir / "absent.sock")], log_dir=tmp_path)


# -- virtio_user -> net_vhost -------------------------------------------------------

def _drain_equal(rx_side: d.TestPmd, rx_port: int, sent: int) -> d.PortStats:
    """Wait (bounded) until the receiver counted all `sent` packets; its stats."""
    deadline = time.monotonic() + WAIT
    stats = rx_side.port_stats(rx_port)
    while stats.rx_packets < sent and time.monotonic() < deadline:
        time.sleep(d.POLL_INTERVAL)
        stats = rx_side.port_stats(rx_port)
    return stats


@needs_dpdk
@pytest.mark.parametrize("size", [64, 1514])
def test_txonly_guest_to_vhost(sockdir: Path, tmp_path: Path, size: int) -> None:
    sock = sockdir / "vh.sock"
    with d.vhost_backend(sock, log_dir=tmp_path) as vh:
        vu = d.TestPmd([d.virtio_user_vdev(sock)], tag="vu", main_lcore=1, log_dir=tmp_path,
                       app_args=[f"--txpkts={size}", "--tx-ip=198.18.0.1,198.18.0.2"])
        try:
            vu.link_up(0, WAIT)
            vh.link_up(0, WAIT)
            vu.set_fwd("txonly")
            vu.start()
            _drain_equal(vh, 0, TXONLY_PACKETS)
            vu.stop()
            sent = vu.port_stats(0)
            got = _drain_equal(vh, 0, sent.tx_packets)
            xstats = vh.port_xstats(0)  # only while the device exists
        finally:
            vu.close()
        features = vh.negotiated_features()
    assert sent.tx_packets >= TXONLY_PACKETS
    assert got.rx_packets == sent.tx_packets
    assert got.rx_bytes == sent.tx_bytes == sent.tx_packets * size
    bucket = "rx_q0_size_64_packets" if size == 64 else "rx_q0_size_1024_1518_packets"
    assert xstats[bucket] == got.rx_packets
    assert d.feature_names(features[-1]) == BASE_FEATURES | {"PROTOCOL_FEATURES"}


@needs_dpdk
def test_txonly_vhost_to_guest(sockdir: Path, tmp_path: Path) -> None:
    """The reverse direction: net_vhost generates, virtio_user counts."""
    sock = sockdir / "vh.sock"
    with d.vhost_backend(sock, fwd="txonly", start=False, log_dir=tmp_path,
                         app_args=["--txpkts=64"]) as vh:
        vu = d.TestPmd([d.virtio_user_vdev(sock)], tag="vu", main_lcore=1, log_dir=tmp_path)
        try:
            vu.link_up(0, WAIT)
            vu.set_fwd("rxonly")
            vu.start()
            vh.start()
            _drain_equal(vu, 0, TXONLY_PACKETS)
            vh.stop()
            sent = vh.port_stats(0)
            got = _drain_equal(vu, 0, sent.tx_packets)
        finally:
            vu.close()
    assert sent.tx_packets >= TXONLY_PACKETS
    assert got.rx_packets == sent.tx_packets
    assert got.rx_bytes == sent.tx_bytes == 64 * sent.tx_packets


@needs_dpdk
def test_tso_superframes_reach_vhost_as_gso(sockdir: Path, tmp_path: Path) -> None:
    """pcap of 64 KiB TCP frames -> csum engine with TSO on virtio_user -> net_vhost
    sees each one whole, marked as a GSO packet (RX_LRO), after a renegotiation
    on the same connection."""
    sock, pcap = sockdir / "vh.sock", tmp_path / "super.pcap"
    frames = [d.tcp_superframe(), d.tcp_superframe(v6=True)]
    d.write_pcap(pcap, frames * 5)
    with d.vhost_backend(sock, tso=True, verbose=True, log_dir=tmp_path) as vh:
        res = d.virtio_user_tx(sock, pcap, tso_mss=d.TSO_MSS, timeout=WAIT, log_dir=tmp_path,
                               drained=lambda: vh.port_stats(0).rx_packets >= 10)
        got = vh.port_stats(0)
        seen = vh.verbose_packets()
        features = vh.negotiated_features()
        connections = vh.output().count(b"new vhost user connection")
    assert res.complete and res.port.tx_packets == 10 and res.fwd.tx_dropped == 0
    assert got.rx_packets == 10
    assert [p.length for p in seen] == [len(f) for f in frames * 5]
    assert all("RTE_MBUF_F_RX_LRO" in p.ol_flags for p in seen)
    assert connections == 1
    assert len(features) == 2
    assert d.feature_names(features[0]) == BASE_FEATURES | {"PROTOCOL_FEATURES"}
    assert d.feature_names(features[1]) == (BASE_FEATURES | TX_OFFLOAD_FEATURES
                                            | {"PROTOCOL_FEATURES"})


@needs_dpdk
def test_tso_needs_backend_tso(sockdir: Path, tmp_path: Path) -> None:
    """net_vhost offers HOST_TSO only with tso=1; virtio_user then refuses ``tso set``."""
    sock = sockdir / "vh.sock"
    with d.vhost_backend(sock, log_dir=tmp_path):
        with d.VirtioUser(sock, log_dir=tmp_path) as vu:
            vu.link_up(WAIT)
            caps = vu.pmd.offload_capabilities(d.VU_PORT, "tx")
            with pytest.raises(d.DpdkError, match="TSO is not supported"):
                vu.pmd.set_tx_offloads(d.VU_PORT, tso_mss=d.TSO_MSS)
    assert {"TCP_CKSUM", "UDP_CKSUM"} <= caps and "TCP_TSO" not in caps


def _l4_check_offset(frame: bytes) -> int:
    """Offset of the TCP or UDP check field in an untagged IPv4/IPv6 frame."""
    if frame[12:14] == b"\x08\x00":
        l4, proto = 14 + (frame[14] & 0xF) * 4, frame[23]
    else:
        l4, proto = 14 + 40, frame[20]
    return l4 + (16 if proto == d.IPPROTO_TCP else 6)


def _pseudo_sum_full_length(frame: bytes) -> int:
    """The folded pseudo-header sum over the full L4 length (Linux's NEEDS_CSUM form)."""
    if frame[12:14] == b"\x08\x00":
        ihl = (frame[14] & 0xF) * 4
        l4len = struct.unpack_from("!H", frame, 16)[0] - ihl
        return pktlib.pseudo_sum(4, frame[26:30], frame[30:34], frame[23], l4len)
    l4len = struct.unpack_from("!H", frame, 18)[0]
    return pktlib.pseudo_sum(6, frame[22:38], frame[38:54], frame[20], l4len)


@needs_dpdk
@pytest.mark.parametrize("mode", ["csum", "tso"])
def test_guest_ring_bytes(sockdir: Path, tmp_path: Path, mode: str) -> None:
    """What virtio_user puts in the ring with offloads on, seen raw by net_vhost:
    the frame unchanged except the L4 check field, which holds the pseudo-header
    sum over the full L4 length (the form the Linux kernel expects)."""
    sock, pcap, cap = sockdir / "vh.sock", tmp_path / "in.pcap", tmp_path / "cap.pcap"
    frames = [d.tcp_frame(1000), d.udp_frame(1000, v6=True), d.tcp_superframe(v6=True)]
    d.write_pcap(pcap, frames)
    with d.vhost_backend(sock, tso=True, raw=True, capture=cap, mbuf_size=d.MAX_MBUF_SIZE,
                         log_dir=tmp_path) as vh:
        res = d.virtio_user_tx(sock, pcap, csum=True,
                               tso_mss=d.TSO_MSS if mode == "tso" else None,
                               timeout=WAIT, log_dir=tmp_path,
                               drained=lambda: vh.port_stats(0).rx_packets >= len(frames))
    got = d.read_pcap(cap)
    assert res.complete and len(got) == len(frames)
    for sent, ring in zip(frames, got, strict=True):
        check = _l4_check_offset(sent)
        assert ring[:check] + ring[check + 2:] == sent[:check] + sent[check + 2:]
        assert struct.unpack_from("!H", ring, check)[0] == _pseudo_sum_full_length(sent)


@needs_dpdk
def test_guest_receives_exact_frames(sockdir: Path, tmp_path: Path) -> None:
    """net_vhost sends a pcap once; virtio_user_rx returns the frames byte for byte,
    after negotiating GUEST_CSUM/GUEST_TSO for its RX offloads."""
    sock, pcap = sockdir / "vh.sock", tmp_path / "mix.pcap"
    frames = [d.tcp_frame(1514, seq=i) for i in range(3)] + [d.udp_frame(64, v6=True)]
    d.write_pcap(pcap, frames)
    with d.vhost_backend(sock, send_pcap=pcap, start=False, log_dir=tmp_path) as vh:
        res = d.virtio_user_rx(sock, len(frames), WAIT, rx_offloads=d.RX_OFFLOADS_ALL,
                               verbose=True, on_ready=vh.start, log_dir=tmp_path)
        features = vh.negotiated_features()
    assert res.complete and res.port.rx_packets == len(frames)
    assert res.frames == frames
    assert [p.length for p in res.packets] == [len(f) for f in frames]
    assert RX_OFFLOAD_FEATURES <= d.feature_names(features[-1])


@needs_dpdk
def test_server_mode_guest(sockdir: Path, tmp_path: Path) -> None:
    """virtio_user listening (server=1), net_vhost connecting (client=1): the
    shape of ``vmdnet-vionet --connect``.  The probe blocks until the backend
    connects, so VirtioUser waits for testpmd only in link_up()."""
    sock, pcap = sockdir / "vu.sock", tmp_path / "f.pcap"
    d.write_pcap(pcap, [d.tcp_frame(1514, seq=i) for i in range(8)])
    with d.VirtioUser(sock, send_pcap=pcap, server=True, capture=False,
                      log_dir=tmp_path) as vu:
        assert sock.is_socket()
        with d.vhost_backend(sock, client=True, log_dir=tmp_path) as vh:
            vu.link_up(WAIT)
            vu.start()
            assert vu.wait_tx(8, WAIT)
            got = _drain_equal(vh, 0, 8)
            res = vu.finish()
    assert res.port.tx_packets == got.rx_packets == 8
    assert not sock.exists()  # cleanup removed the socket virtio_user leaves behind


@needs_dpdk
@pytest.mark.parametrize("packed", [False, True])
def test_virtio_user_feature_requests(sockdir: Path, tmp_path: Path, packed: bool) -> None:
    """Offered every feature bit (but PROTOCOL_FEATURES), virtio_user asks for the
    base set, then GUEST_* once RX offloads are on, then CSUM/HOST_TSO once TX
    offloads are on; never EVENT_IDX, UFO, USO or ECN."""
    sock = sockdir / "rec.sock"
    offer = ((1 << 64) - 1) & ~(1 << d.PROTOCOL_FEATURES_BIT)
    with d.VhostUserRecorder(sock, offer) as rec:
        with d.VirtioUser(sock, rx_offloads=d.RX_OFFLOADS_ALL, tso_mss=d.TSO_MSS,
                          packed=packed, log_dir=tmp_path) as vu:
            vu.link_up(WAIT)
            vu.start()
            caps = (vu.pmd.offload_capabilities(d.VU_PORT, "tx"),
                    vu.pmd.offload_capabilities(d.VU_PORT, "rx"))
    ring = {"RING_PACKED"} if packed else set()
    asked = [d.feature_names(f) for f in rec.set_features]
    assert asked == [BASE_FEATURES | ring, BASE_FEATURES | ring | RX_OFFLOAD_FEATURES,
                     BASE_FEATURES | ring | RX_OFFLOAD_FEATURES | TX_OFFLOAD_FEATURES]
    assert not NEVER_REQUESTED & set().union(*asked)
    # SET_VRING_ENABLE (18) arrives although PROTOCOL_FEATURES was not negotiated.
    assert 18 in rec.requests
    assert {"TCP_TSO", "TCP_CKSUM", "UDP_CKSUM"} <= caps[0]
    assert {"TCP_LRO", "TCP_CKSUM", "UDP_CKSUM"} <= caps[1]


@needs_dpdk
@pytest.mark.slow
def test_guest_receives_gso(sockdir: Path, tmp_path: Path) -> None:
    """GSO towards the guest: virtio_user A sends TSO super-frames into net_vhost
    port 0 (raw: the GSO request stays on the mbuf), io-forwarded out of net_vhost
    port 1 to virtio_user B with RX offloads, which receives them whole as
    RX_LRO with NEEDS_CSUM (RX_L4_CKSUM_NONE)."""
    a, b, pcap = sockdir / "a.sock", sockdir / "b.sock", tmp_path / "super.pcap"
    frames = [d.tcp_superframe(seq=i * 65160) for i in range(3)]
    d.write_pcap(pcap, frames)
    vh = d.TestPmd([d.vhost_vdev(a, tso=True, raw=True),
                    d.vhost_vdev(b, tso=True, name="net_vhost1")], tag="vh2",
                   log_dir=tmp_path)
    try:
        vh.set_fwd("io")
        vh.start()
        # 64 KiB mbufs: each frame lands in one segment, so the capture is whole.
        with d.VirtioUser(b, rx_offloads=d.RX_OFFLOADS_ALL, verbose=True,
                          mbuf_size=d.MAX_MBUF_SIZE, log_dir=tmp_path) as rx:
            rx.link_up(WAIT)
            rx.start()
            tx = d.virtio_user_tx(a, pcap, tso_mss=d.TSO_MSS, timeout=WAIT, log_dir=tmp_path,
                                  drained=lambda: rx.pmd.port_stats(0).rx_packets >= len(frames))
            res = rx.finish(rx.wait_rx(len(frames), WAIT))
    finally:
        vh.close()
    assert tx.complete and res.complete
    assert [len(f) for f in res.frames] == [len(f) for f in frames]
    assert all({"RTE_MBUF_F_RX_LRO", "RTE_MBUF_F_RX_L4_CKSUM_NONE"} <= p.ol_flags
               for p in res.packets)


# -- Open vSwitch with DPDK (bench/dpdk_common.py) ---------------------------------

def _bench_common():
    """bench/dpdk_common.py, imported from the repository root."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    import bench.dpdk_common as common
    return common


@needs_dpdk
@pytest.mark.slow
def test_ovs_dpdk_recipe() -> None:
    """A private OVS-DPDK (own db, daemons, netns, hugepages) with userspace TSO:
    64 KiB super-frames from virtio_user reach the namespace's tap whole, and
    everything the recipe set up is gone afterwards."""
    common = _bench_common()
    reason = common.ovs_dpdk_available()
    if reason:
        pytest.skip(reason)
    pages_before = int(common.NR_HUGEPAGES.read_text())
    frames = [d.tcp_superframe(seq=i * 65160) for i in range(6)]
    with tempfile.TemporaryDirectory(prefix="vn-ovs-t-") as work:
        pcap = Path(work) / "super.pcap"
        d.write_pcap(pcap, frames)
        with common.ovs_dpdk_vhost() as port:
            with d.VirtioUser(port.socket_path, send_pcap=pcap, server=True, capture=False,
                              tso_mss=d.TSO_MSS, log_dir=work) as vu:
                vu.link_up(WAIT)
                vu.start()
                queued = vu.wait_tx(len(frames), WAIT)
                arrived = vu.wait_until(lambda: common.tap_counters(
                    port.netns, port.tap)["rx_packets"] >= len(frames), WAIT)
                res = vu.finish(queued and arrived)
            tap = common.tap_counters(port.netns, port.tap)
            features = port.ovs.negotiated_features()
            netns, huge = port.netns, port.ovs.workdir / "huge"
    assert res.complete and res.port.tx_packets == len(frames)
    assert tap["rx_packets"] == len(frames)
    assert tap["rx_bytes"] == sum(len(f) for f in frames)
    assert TX_OFFLOAD_FEATURES <= d.feature_names(features[-1])
    assert not (Path("/run/netns") / netns).exists()
    assert int(common.NR_HUGEPAGES.read_text()) == pages_before
    assert str(huge) not in Path("/proc/mounts").read_text()
