"""vionet with packed virtqueues under a real Linux guest: QEMU 7.2 (TCG) with
``virtio-net-pci,packed=on`` over vhost-user.

DPDK's virtio_user (tests/e2e/test_vionet_dpdk_packed.py) never negotiates
EVENT_IDX; Linux's virtio_ring does, so here the packed event suppression
structures run in their "desc" mode both ways (the guest asks for used-buffer
notifications at a descriptor position, vionet asks for kicks at one), with
interrupts the guest cannot do without.  Checked: the guest negotiated
RING_PACKED and EVENT_IDX, vionet started packed rings, ping both ways,
16 MiB TCP payloads both ways (IPv4 and IPv6) with SHA-256 verified, nothing
dropped.

Reuses test_guest_vionet.py's namespace (vn-gvio-<pid>), vionet and image
fixtures; skips only when QEMU, the guest image's inputs, root or
/dev/net/tun are missing (its skip_reason()).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
import test_guest_vionet as gv
from guestlib import Guest, GuestImage, GuestNetns, VhostUserNetdev, guest_to_host, host_to_guest
from test_guest_vionet import image, ns, vionet  # noqa: F401  (fixtures)

from vmdnet.virtio import features as vf

pytestmark = [pytest.mark.root, pytest.mark.slow]

PACKED_STARTED = "packed) started"


@pytest.fixture(scope="module")
def guest(image: GuestImage, ns: GuestNetns, vionet: gv.Vionet) -> Iterator[Guest]:  # noqa: F811
    log_path = image.outdir / "logs" / "test_guest_vionet_packed.log"
    netdev = VhostUserNetdev(vionet.sock, device_props={"packed": True})
    with Guest(image, netdev, ip=f"{gv.GUEST4}/24", ip6=f"{gv.GUEST6}/64",
               netns=ns.name, log_path=log_path) as g:
        g.wait_booted()
        yield g


def test_packed_rings_negotiated(guest: Guest, vionet: gv.Vionet) -> None:  # noqa: F811
    features = guest.virtio_features()
    want = gv.bit(vf.VIRTIO_F_RING_PACKED) | gv.bit(vf.VIRTIO_RING_F_EVENT_IDX)
    assert features & want == want, vf.names(want & ~features)
    text = vionet.log_path.read_text(errors="replace")
    assert text.count(PACKED_STARTED) >= 2, text
    assert "split) started" not in text, text


def test_packed_ping_and_tcp_both_ways(guest: Guest, ns: GuestNetns,  # noqa: F811
                                       vionet: gv.Vionet, image: GuestImage) -> None:  # noqa: F811
    for addr in (gv.HOST4, gv.HOST6):
        out = guest.check(f"ping -c 3 -i 0.2 -W 5 {addr}")
        assert " 0% packet loss" in out, out
    tx_sha = guest.check(f"head -c {gv.PAYLOAD_BYTES} /dev/urandom > /tmp/tx && "
                         "sha256sum /tmp/tx").split()[0]
    payload = os.urandom(gv.PAYLOAD_BYTES)
    want = hashlib.sha256(payload).hexdigest()
    for host_addr, guest_addr in ((gv.HOST4, gv.GUEST4), (gv.HOST6, gv.GUEST6)):
        assert guest_to_host(guest, ns, host_addr, gv.PAYLOAD_BYTES) == tx_sha
        assert host_to_guest(guest, ns, guest_addr, payload) == want
    stats = vionet.stats()
    for side in ("tx", "rx"):
        assert not any(stats[side]["drops"].values()), stats[side]["drops"]
        assert not any(stats[side]["ring_errors"].values()), stats[side]["ring_errors"]
    assert stats["rx"]["notifications"] > 0 and stats["tx"]["notifications"] > 0, stats
