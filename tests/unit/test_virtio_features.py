"""virtio feature bits against the numbers in Linux's uapi headers and the virtio spec."""

from __future__ import annotations

import pytest

from vmdnet.virtio import features as F
from vmdnet.virtio.net_hdr import HDR_SIZES

# Bit numbers as printed in include/uapi/linux/virtio_net.h / virtio_config.h and
# vhost-user.rst (literals on purpose: this is the independent side).
SPEC = {
    "VIRTIO_NET_F_CSUM": 0, "VIRTIO_NET_F_GUEST_CSUM": 1,
    "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS": 2, "VIRTIO_NET_F_MTU": 3, "VIRTIO_NET_F_MAC": 5,
    "VIRTIO_NET_F_GSO": 6, "VIRTIO_NET_F_GUEST_TSO4": 7, "VIRTIO_NET_F_GUEST_TSO6": 8,
    "VIRTIO_NET_F_GUEST_ECN": 9, "VIRTIO_NET_F_GUEST_UFO": 10, "VIRTIO_NET_F_HOST_TSO4": 11,
    "VIRTIO_NET_F_HOST_TSO6": 12, "VIRTIO_NET_F_HOST_ECN": 13, "VIRTIO_NET_F_HOST_UFO": 14,
    "VIRTIO_NET_F_MRG_RXBUF": 15, "VIRTIO_NET_F_STATUS": 16, "VIRTIO_NET_F_CTRL_VQ": 17,
    "VIRTIO_NET_F_CTRL_RX": 18, "VIRTIO_NET_F_CTRL_VLAN": 19, "VIRTIO_NET_F_CTRL_RX_EXTRA": 20,
    "VIRTIO_NET_F_GUEST_ANNOUNCE": 21, "VIRTIO_NET_F_MQ": 22, "VIRTIO_NET_F_CTRL_MAC_ADDR": 23,
    "VIRTIO_NET_F_GUEST_RSC4": 41, "VIRTIO_NET_F_GUEST_RSC6": 42,
    "VIRTIO_NET_F_DEVICE_STATS": 50, "VIRTIO_NET_F_VQ_NOTF_COAL": 52,
    "VIRTIO_NET_F_NOTF_COAL": 53, "VIRTIO_NET_F_GUEST_USO4": 54, "VIRTIO_NET_F_GUEST_USO6": 55,
    "VIRTIO_NET_F_HOST_USO": 56, "VIRTIO_NET_F_HASH_REPORT": 57, "VIRTIO_NET_F_GUEST_HDRLEN": 59,
    "VIRTIO_NET_F_RSS": 60, "VIRTIO_NET_F_RSC_EXT": 61, "VIRTIO_NET_F_STANDBY": 62,
    "VIRTIO_NET_F_SPEED_DUPLEX": 63,
    "VIRTIO_F_NOTIFY_ON_EMPTY": 24, "VHOST_F_LOG_ALL": 26, "VIRTIO_F_ANY_LAYOUT": 27,
    "VIRTIO_RING_F_INDIRECT_DESC": 28, "VIRTIO_RING_F_EVENT_IDX": 29,
    "VHOST_USER_F_PROTOCOL_FEATURES": 30, "VIRTIO_F_VERSION_1": 32,
    "VIRTIO_F_ACCESS_PLATFORM": 33, "VIRTIO_F_RING_PACKED": 34, "VIRTIO_F_IN_ORDER": 35,
    "VIRTIO_F_ORDER_PLATFORM": 36, "VIRTIO_F_SR_IOV": 37, "VIRTIO_F_NOTIFICATION_DATA": 38,
    "VIRTIO_F_NOTIF_CONFIG_DATA": 39, "VIRTIO_F_RING_RESET": 40,
}


def test_every_bit_number_matches_the_spec() -> None:
    assert F.FEATURE_BITS == SPEC
    for name, n in SPEC.items():
        assert getattr(F, name) == n


def test_names_round_trip_and_unknown_bits() -> None:
    mask = sum(1 << n for n in SPEC.values()) | 1 << 4 | 1 << 45
    names = F.names(mask)
    assert "bit4" in names and "bit45" in names
    assert F.parse_names(names) == mask
    assert F.names(0) == []


def test_parse_short_and_mixed_case_names() -> None:
    assert F.parse_names(["csum", "Guest_TSO4", "version_1", "event_idx", "protocol_features",
                          "log_all", "iommu_platform"]) == (
        1 << 0 | 1 << 7 | 1 << 32 | 1 << 29 | 1 << 30 | 1 << 26 | 1 << 33)
    with pytest.raises(ValueError, match="tso5"):
        F.parse_names(["tso5"])
    with pytest.raises(ValueError):
        F.parse_names(["bit64"])


def test_names_refuses_non_u64() -> None:
    with pytest.raises(ValueError):
        F.names(1 << 64)
    with pytest.raises(ValueError):
        F.names(-1)


@pytest.mark.parametrize("bits, size", [
    ([], 10),
    (["csum", "guest_csum"], 10),
    (["mrg_rxbuf"], 12),
    (["version_1"], 12),
    (["version_1", "mrg_rxbuf"], 12),
    (["version_1", "hash_report"], 20),
])
def test_net_hdr_size_rule(bits: list[str], size: int) -> None:
    assert F.net_hdr_size(F.parse_names(bits)) == size
    assert size in HDR_SIZES
