"""Feature bits of virtio-net and of the virtio transport, with the spec's names.

Every constant is a *bit number* (as in the spec and in Linux's headers), not a
mask: ``1 << VIRTIO_NET_F_CSUM`` is the mask.  vhost-user carries features as
one u64, so only bits 0..63 exist here.

Sources checked: virtio 1.2/1.3 sections 5.1.3 (device feature bits) and 6
(reserved feature bits), Linux include/uapi/linux/virtio_net.h and
virtio_config.h, QEMU docs/interop/vhost-user.rst.

Bits 41 and 42: virtio 1.3 gives bit 41 to VIRTIO_F_ADMIN_VQ, but for a net
device QEMU (7.2 included) uses 41/42 as the legacy VIRTIO_NET_F_GUEST_RSC4/6
bits alongside VIRTIO_NET_F_RSC_EXT.  vmdnet is a net device behind QEMU, so
41/42 are named GUEST_RSC4/6 here and ADMIN_VQ is not named.

Helpers:
  bit(n)                 -> mask;  has(features, n) -> bool
  names(bits)            -> ["VIRTIO_NET_F_CSUM", ...] (unknown bits as "bitNN")
  parse_names(list)      -> mask; accepts full names, short names ("csum",
                            "guest_tso4", "version_1") and "bitNN"
  net_hdr_size(features) -> 10, 12 or 20 (virtio_net_hdr size for these features)
"""

from __future__ import annotations

from collections.abc import Iterable

# --- virtio-net device feature bits (virtio 1.3, 5.1.3) ---
VIRTIO_NET_F_CSUM = 0  # device handles packets with partial checksum (guest TX)
VIRTIO_NET_F_GUEST_CSUM = 1  # driver handles packets with partial checksum (guest RX)
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2  # control vq can reconfigure GUEST_* offloads
VIRTIO_NET_F_MTU = 3  # device reports a maximum MTU
VIRTIO_NET_F_MAC = 5  # device has given a MAC address
VIRTIO_NET_F_GSO = 6  # legacy: device handles any GSO type
VIRTIO_NET_F_GUEST_TSO4 = 7  # driver can receive TSOv4
VIRTIO_NET_F_GUEST_TSO6 = 8  # driver can receive TSOv6
VIRTIO_NET_F_GUEST_ECN = 9  # driver can receive TSO with ECN
VIRTIO_NET_F_GUEST_UFO = 10  # driver can receive UFO
VIRTIO_NET_F_HOST_TSO4 = 11  # device can receive TSOv4 (guest TX)
VIRTIO_NET_F_HOST_TSO6 = 12  # device can receive TSOv6
VIRTIO_NET_F_HOST_ECN = 13  # device can receive TSO with ECN
VIRTIO_NET_F_HOST_UFO = 14  # device can receive UFO
VIRTIO_NET_F_MRG_RXBUF = 15  # driver can merge receive buffers
VIRTIO_NET_F_STATUS = 16  # config status field available
VIRTIO_NET_F_CTRL_VQ = 17  # control channel available
VIRTIO_NET_F_CTRL_RX = 18  # control channel RX mode support
VIRTIO_NET_F_CTRL_VLAN = 19  # control channel VLAN filtering
VIRTIO_NET_F_CTRL_RX_EXTRA = 20  # extra RX mode control
VIRTIO_NET_F_GUEST_ANNOUNCE = 21  # driver can send gratuitous packets
VIRTIO_NET_F_MQ = 22  # multiqueue with automatic receive steering
VIRTIO_NET_F_CTRL_MAC_ADDR = 23  # set MAC address through control channel
VIRTIO_NET_F_GUEST_RSC4 = 41  # legacy (QEMU): device coalesces TCP/IPv4 for the guest
VIRTIO_NET_F_GUEST_RSC6 = 42  # legacy (QEMU): device coalesces TCP/IPv6 for the guest
VIRTIO_NET_F_DEVICE_STATS = 50  # device-level statistics through control vq
VIRTIO_NET_F_VQ_NOTF_COAL = 52  # per-virtqueue notification coalescing
VIRTIO_NET_F_NOTF_COAL = 53  # notification coalescing
VIRTIO_NET_F_GUEST_USO4 = 54  # driver can receive USOv4
VIRTIO_NET_F_GUEST_USO6 = 55  # driver can receive USOv6
VIRTIO_NET_F_HOST_USO = 56  # device can receive USO (guest TX)
VIRTIO_NET_F_HASH_REPORT = 57  # device reports a per-packet hash (20-byte header)
VIRTIO_NET_F_GUEST_HDRLEN = 59  # driver provides the exact hdr_len
VIRTIO_NET_F_RSS = 60  # RSS receive steering
VIRTIO_NET_F_RSC_EXT = 61  # extended coalescing info in the header
VIRTIO_NET_F_STANDBY = 62  # standby for a primary device with the same MAC
VIRTIO_NET_F_SPEED_DUPLEX = 63  # device reports speed and duplex

# --- transport / reserved feature bits (virtio 1.3, 6) ---
VIRTIO_F_NOTIFY_ON_EMPTY = 24  # legacy: notify when the avail ring empties
VHOST_F_LOG_ALL = 26  # vhost: dirty-page logging for live migration
VIRTIO_F_ANY_LAYOUT = 27  # legacy: no framing assumptions on descriptors
VIRTIO_RING_F_INDIRECT_DESC = 28  # indirect descriptor tables
VIRTIO_RING_F_EVENT_IDX = 29  # used_event / avail_event suppression
VHOST_USER_F_PROTOCOL_FEATURES = 30  # vhost-user: protocol feature negotiation
VIRTIO_F_VERSION_1 = 32  # virtio 1.x (little-endian, 12-byte net header)
VIRTIO_F_ACCESS_PLATFORM = 33  # addresses go through a platform IOMMU
VIRTIO_F_RING_PACKED = 34  # packed virtqueue layout
VIRTIO_F_IN_ORDER = 35  # buffers used in the order made available
VIRTIO_F_ORDER_PLATFORM = 36  # platform memory ordering needed
VIRTIO_F_SR_IOV = 37  # SR-IOV virtual functions
VIRTIO_F_NOTIFICATION_DATA = 38  # driver passes extra data in notifications
VIRTIO_F_NOTIF_CONFIG_DATA = 39  # notification data from config space
VIRTIO_F_RING_RESET = 40  # per-queue reset

# Older name of ACCESS_PLATFORM still used by QEMU and the vhost-user spec.
VIRTIO_F_IOMMU_PLATFORM = VIRTIO_F_ACCESS_PLATFORM

# The features field is one u64 on the vhost-user wire.
FEATURE_BITS_MAX = 64

# Name -> bit number, in bit order; the canonical names for names().
FEATURE_BITS: dict[str, int] = dict(sorted(
    ((k, v) for k, v in globals().items()
     if k.startswith(("VIRTIO_NET_F_", "VIRTIO_F_", "VIRTIO_RING_F_", "VHOST_"))
     and isinstance(v, int) and k != "VIRTIO_F_IOMMU_PLATFORM"),
    key=lambda kv: kv[1]))

_BY_BIT: dict[int, str] = {v: k for k, v in FEATURE_BITS.items()}
assert len(_BY_BIT) == len(FEATURE_BITS), "two feature names share one bit"

_PREFIXES = ("VIRTIO_NET_F_", "VIRTIO_RING_F_", "VIRTIO_F_", "VHOST_USER_F_", "VHOST_F_")


def _short(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


_BY_NAME: dict[str, int] = {}
for _name, _bit in FEATURE_BITS.items():
    _BY_NAME[_name] = _bit
    _BY_NAME[_short(_name)] = _bit
_BY_NAME["VIRTIO_F_IOMMU_PLATFORM"] = VIRTIO_F_ACCESS_PLATFORM
_BY_NAME["IOMMU_PLATFORM"] = VIRTIO_F_ACCESS_PLATFORM
# Short names must be unambiguous, or parse_names could pick the wrong bit.
assert len({_short(n) for n in FEATURE_BITS}) == len(FEATURE_BITS), "short name clash"


def bit(n: int) -> int:
    """Mask of feature bit number `n`."""
    if not 0 <= n < FEATURE_BITS_MAX:
        raise ValueError(f"feature bit {n} outside 0..{FEATURE_BITS_MAX - 1}")
    return 1 << n


def has(features: int, n: int) -> bool:
    """True when bit number `n` is set in the mask `features`."""
    return bool(features >> n & 1)


def names(bits: int) -> list[str]:
    """Spec names of the bits set in `bits`, lowest bit first; unknown bits as "bitNN"."""
    if not 0 <= bits < 1 << FEATURE_BITS_MAX:
        raise ValueError(f"feature mask {bits:#x} is not a u64")
    out = []
    for n in range(FEATURE_BITS_MAX):
        if bits >> n & 1:
            out.append(_BY_BIT.get(n, f"bit{n}"))
    return out


def parse_names(items: Iterable[str]) -> int:
    """Mask from feature names: full ("VIRTIO_NET_F_CSUM"), short ("csum") or "bitNN".

    Case-insensitive.  Raises ValueError on an unknown name.
    """
    mask = 0
    for raw in items:
        name = raw.strip().upper()
        if name.startswith("BIT") and name[3:].isdigit():
            mask |= bit(int(name[3:]))
        elif name in _BY_NAME:
            mask |= 1 << _BY_NAME[name]
        else:
            raise ValueError(f"unknown virtio feature name {raw!r}")
    return mask


def net_hdr_size(features: int) -> int:
    """Size of struct virtio_net_hdr for the negotiated `features` (spec 5.1.6).

    20 bytes with HASH_REPORT, 12 with VERSION_1 or MRG_RXBUF (num_buffers
    present), else the legacy 10.
    """
    if has(features, VIRTIO_NET_F_HASH_REPORT):
        return 20
    if has(features, VIRTIO_F_VERSION_1) or has(features, VIRTIO_NET_F_MRG_RXBUF):
        return 12
    return 10
