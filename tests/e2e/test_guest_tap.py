"""Baseline: the test guest on QEMU's own tap backend, before vionet takes QEMU's place.

Proves that the guest (tests/guest) and its harness (tests/guestlib.py) work end to end:
a Debian 6.1 guest under QEMU/TCG negotiates virtio-net offloads with QEMU's tap backend,
pings the host both ways over IPv4 and IPv6, and moves TCP data both ways whose SHA-256 is
checked on both ends, with the guest's offloads on and then off. The tap's own counters show
that the offloads really act: with them on, the guest's TSO reaches the tap as frames larger
than the MTU (and the host's TSO reaches the guest); with them off, no frame is.

Everything runs in the namespace vn-guest-<pid> (198.18.0.0/24, fd00::/64), which the
module's fixtures delete with the tap and QEMU even when a test fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from guestlib import (
    MTU_FRAME,
    XFER_TIMEOUT,
    Guest,
    GuestImage,
    GuestNetns,
    TapNetdev,
    VhostUserNetdev,
    guest_to_host,
    host_to_guest,
    link_counters,
    mean_frame,
    remove_stale_netns,
    set_offloads,
    skip_reason,
    stop_process,
    tcp_out_segs,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]
log = logging.getLogger(__name__)
# test_guest_vionet.py imports these from here; all but PAYLOAD_BYTES live in guestlib.
__all__ = ["MTU_FRAME", "PAYLOAD_BYTES", "guest_to_host", "host_to_guest", "mean_frame",
           "set_offloads", "skip_reason", "stop"]
stop = stop_process

NETNS_PREFIX = "vn-guest-"
TAP = "vngt0"
HOST4, GUEST4 = "198.18.0.1", "198.18.0.2"
HOST6, GUEST6 = "fd00::1", "fd00::2"
# A 16 MiB transfer makes hundreds of TSO super-packets yet takes about a second under TCG.
PAYLOAD_BYTES = 16 << 20
# iperf3 amount per direction (its own unit syntax): bounded by bytes, not time.
IPERF_AMOUNT = "20M"
IPERF_BYTES = 20 << 20
IPERF_PORT = 5201

# virtio-net feature bits (virtio 1.2, 5.1.3 and 6) that QEMU's tap backend offers and
# Linux 6.1's virtio_net accepts.
EXPECTED_FEATURES = {
    "VIRTIO_NET_F_CSUM": 0,
    "VIRTIO_NET_F_GUEST_CSUM": 1,
    "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS": 2,
    "VIRTIO_NET_F_MAC": 5,
    "VIRTIO_NET_F_GUEST_TSO4": 7,
    "VIRTIO_NET_F_GUEST_TSO6": 8,
    "VIRTIO_NET_F_HOST_TSO4": 11,
    "VIRTIO_NET_F_HOST_TSO6": 12,
    "VIRTIO_NET_F_MRG_RXBUF": 15,
    "VIRTIO_NET_F_STATUS": 16,
    "VIRTIO_NET_F_CTRL_VQ": 17,
    "VIRTIO_F_VERSION_1": 32,
}


@pytest.fixture(scope="module")
def image() -> GuestImage:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return GuestImage.build()


@pytest.fixture(scope="module")
def ns(image: GuestImage) -> Iterator[GuestNetns]:
    remove_stale_netns(NETNS_PREFIX)
    netns = GuestNetns(f"{NETNS_PREFIX}{os.getpid()}")
    try:
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "tuntap", "add", "dev", TAP, "mode", "tap"],
            ["ip", "addr", "add", f"{HOST4}/24", "dev", TAP],
            ["ip", "addr", "add", f"{HOST6}/64", "dev", TAP, "nodad"],
            ["ip", "link", "set", TAP, "up"],
        ):
            netns.run(argv)
        yield netns
    finally:
        netns.run(["ip", "tuntap", "del", "dev", TAP, "mode", "tap"], check=False)
        netns.close()


@pytest.fixture(scope="module")
def guest(image: GuestImage, ns: GuestNetns) -> Iterator[Guest]:
    log_path = image.outdir / "logs" / "test_guest_tap.log"
    with Guest(image, TapNetdev(TAP), ip=f"{GUEST4}/24", ip6=f"{GUEST6}/64",
               netns=ns.name, log_path=log_path) as g:
        g.wait_booted()
        yield g


@pytest.fixture(scope="module")
def tx_sha(guest: Guest) -> str:
    """The guest's random payload /tmp/tx and its SHA-256."""
    out = guest.check(f"head -c {PAYLOAD_BYTES} /dev/urandom > /tmp/tx && sha256sum /tmp/tx")
    return out.split()[0]


@pytest.fixture(scope="module")
def iperf_server(image: GuestImage, ns: GuestNetns) -> Iterator[None]:
    """The guest's iperf3 binary running on the host side as a server (v4 and v6)."""
    log_path = image.outdir / "logs" / "test_guest_tap-iperf3.log"
    with open(log_path, "wb") as log_file:
        proc = ns.popen(image.host_iperf3("-s", "-p", str(IPERF_PORT)),
                        stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        stop_process(proc)


def tap_counters(ns: GuestNetns) -> dict[str, int]:
    return link_counters(ns, TAP)


def test_negotiated_features(guest: Guest) -> None:
    features = guest.virtio_features()
    missing = [name for name, bit in EXPECTED_FEATURES.items() if not features >> bit & 1]
    assert not missing, f"features {features:#x} lack {missing}"
    assert "tcp-segmentation-offload: on" in guest.check("ethtool -k eth0")


def test_ping_both_ways(guest: Guest, ns: GuestNetns, image: GuestImage) -> None:
    for addr in (HOST4, HOST6):
        out = guest.check(f"ping -c 3 -i 0.2 -W 5 {addr}")
        assert " 0% packet loss" in out, out
    for addr in (GUEST4, GUEST6):
        argv = image.host_busybox("ping", "-c", "3", "-i", "0.2", "-W", "5", addr)
        res = ns.run(argv, check=False)
        assert res.returncode == 0 and " 0% packet loss" in res.stdout, res


@pytest.mark.parametrize("mode", ["on", "off"])
def test_tcp_payload_both_ways(guest: Guest, ns: GuestNetns, tx_sha: str, mode: str) -> None:
    set_offloads(guest, mode)
    payload = os.urandom(PAYLOAD_BYTES)
    want = hashlib.sha256(payload).hexdigest()
    for host_addr, guest_addr in ((HOST4, GUEST4), (HOST6, GUEST6)):
        before, segs_before = tap_counters(ns), tcp_out_segs(guest)
        assert guest_to_host(guest, ns, host_addr, PAYLOAD_BYTES) == tx_sha
        middle, segs = tap_counters(ns), tcp_out_segs(guest) - segs_before
        assert host_to_guest(guest, ns, guest_addr, payload) == want
        after = tap_counters(ns)
        # Packets the tap got from the guest (a TSO super-packet counts once) against
        # the TCP segments the guest sent.  How large its TSO packets are follows its
        # TCP pacing rate, which a TCG guest on a busy host keeps low: count, not size.
        tap_pkts = middle["rx_packets"] - before["rx_packets"]
        guest_tx = mean_frame(before, middle, "rx")
        guest_rx = mean_frame(middle, after, "tx")
        log.info("offloads %s via %s: %d TCP segments in %d tap packets (mean %.0f B), "
                 "tap->guest mean %.0f B", mode, host_addr, segs, tap_pkts, guest_tx, guest_rx)
        if mode == "on":
            assert tap_pkts < segs, f"no guest TSO reached the tap ({segs} segs, {tap_pkts} pkts)"
            assert guest_rx > MTU_FRAME, f"no host TSO reached the guest ({guest_rx:.0f} B)"
        else:
            assert guest_tx <= MTU_FRAME, f"guest TSO is off but {guest_tx:.0f} B frames"
            assert guest_rx <= MTU_FRAME, f"guest offloads off but {guest_rx:.0f} B frames"


@pytest.mark.parametrize("mode", ["on", "off"])
def test_iperf3_both_ways(guest: Guest, iperf_server: None, mode: str) -> None:
    set_offloads(guest, mode)
    for host_addr, reverse in ((HOST4, ""), (HOST6, "-R")):
        # The server may still be starting: a few bounded tries.
        cmd = (f"for i in 1 2 3 4 5; do iperf3 -J -c {host_addr} -p {IPERF_PORT} "
               f"-n {IPERF_AMOUNT} {reverse} > /tmp/iperf.json && exit 0; sleep 1; done; "
               "cat /tmp/iperf.json; exit 1")
        guest.check(cmd, timeout=XFER_TIMEOUT)
        result = json.loads(guest.check("cat /tmp/iperf.json"))
        end = result["end"]
        assert "sum_sent" in end, result.get("error", result)
        assert end["sum_sent"]["bytes"] >= IPERF_BYTES, end["sum_sent"]
        # The receiver stops counting at the sender's TEST_END, so what is still in flight
        # then is not in its sum: only require that data arrived (the payload tests above
        # check every byte).
        assert end["sum_received"]["bytes"] > 0, end["sum_received"]


def test_console_log_written(guest: Guest) -> None:
    """The console log a failing run is debugged with holds the boot and the channel."""
    text = Path(guest.log_path).read_text(errors="replace")
    assert "Run /init as init process" in text and "@@VN-READY@@" in text


def test_netdev_arguments() -> None:
    """The QEMU arguments the netdevs produce (no QEMU needed): vhost-user always with
    vectors=0, device properties as on/off, commas escaped."""
    tap = TapNetdev("vn,t0", device_props={"mrg_rxbuf": False, "host_mtu": 9000})
    assert tap.qemu_args("n0", "52:54:00:00:00:01") == [
        "-netdev", "tap,id=n0,ifname=vn,,t0,script=no,downscript=no,vhost=off",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,mrg_rxbuf=off,host_mtu=9000"]
    client = VhostUserNetdev("/tmp/s.sock", reconnect=1, device_props={"guest_tso4": True})
    assert client.qemu_args("n0", "52:54:00:00:00:01") == [
        "-chardev", "socket,id=cn0,path=/tmp/s.sock,reconnect=1",
        "-netdev", "vhost-user,id=n0,chardev=cn0",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,vectors=0,guest_tso4=on"]
    server = VhostUserNetdev("/tmp/s.sock", server=True)
    assert "socket,id=cn0,path=/tmp/s.sock,server=on,wait=off" in server.qemu_args("n0", "m")
    with pytest.raises(ValueError):
        VhostUserNetdev("/tmp/s.sock", device_props={"vectors": 3}).qemu_args("n0", "m")
    with pytest.raises(ValueError):
        VhostUserNetdev("/tmp/s.sock", server=True, reconnect=1).qemu_args("n0", "m")
