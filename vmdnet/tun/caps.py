"""Negotiated virtio features -> tap capabilities, and what software must fix.

Pure translation, no I/O and no devices: given what the tap is (with or
without IFF_VNET_HDR) and which offloads the user lets it take, decide

- which virtio-net features vionet offers the guest (`offered_features`): only
  what the tap plus the C helper can complete;
- the TUN_F_* flags for TUNSETOFFLOAD from the guest's negotiated GUEST_* bits
  (`tun_offload_flags`): the kernel hands the reader only those offloads;
- for guest TX, which packets may go to the tap as they are and which the C
  helper must checksum or segment first (`tx_plan`).

Kernel rules encoded here (measured on Linux 6.18, see DESIGN.md): every
TUN_F_* flag other than TUN_F_CSUM needs TUN_F_CSUM; TUN_F_USO4 and TUN_F_USO6
only together; TUN_F_TSO_ECN needs TSO4 or TSO6; TUN_F_UFO is accepted but the
kernel never hands out UFO, so GUEST_UFO is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmdnet.virtio import features as vf
from vmdnet.virtio.net_hdr import (
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
)

# The tap offloads a user may allow (vionet --offloads, vm.conf `offload { }`).
OFFLOAD_NAMES = ("csum", "tso4", "tso6", "ecn", "uso", "ufo")
ALL_OFFLOADS = frozenset(OFFLOAD_NAMES)

# Linux's TUN_F_* values (include/uapi/linux/if_tun.h).  The ioctl layer
# (vmdnet.tun.linux, through cffi) asserts at import that these match the
# kernel headers; they live here so this module stays importable anywhere.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40


def _b(n: int) -> int:
    return 1 << n


# Features that have nothing to do with the tap: ring layout and header format.
# RING_PACKED: the C data path drives packed rings too (csrc/vn_vpacked.c).
RING_FEATURES = (_b(vf.VIRTIO_F_VERSION_1) | _b(vf.VIRTIO_F_ANY_LAYOUT)
                 | _b(vf.VIRTIO_RING_F_INDIRECT_DESC) | _b(vf.VIRTIO_RING_F_EVENT_IDX)
                 | _b(vf.VIRTIO_F_RING_PACKED) | _b(vf.VIRTIO_NET_F_MRG_RXBUF))

# Guest TX offloads: the C helper completes whatever the tap cannot take, so all
# are offered whatever the tap is.
HOST_OFFLOADS = (_b(vf.VIRTIO_NET_F_CSUM) | _b(vf.VIRTIO_NET_F_HOST_TSO4)
                 | _b(vf.VIRTIO_NET_F_HOST_TSO6) | _b(vf.VIRTIO_NET_F_HOST_ECN)
                 | _b(vf.VIRTIO_NET_F_HOST_USO) | _b(vf.VIRTIO_NET_F_HOST_UFO))


def parse_offloads(text: str) -> frozenset[str]:
    """Parse "csum,tso4,..." (also "tso" for tso4+tso6, "all", "none")."""
    names: set[str] = set()
    for word in filter(None, (w.strip().lower() for w in text.split(","))):
        if word == "all":
            names |= ALL_OFFLOADS
        elif word == "none":
            continue
        elif word == "tso":
            names |= {"tso4", "tso6"}
        elif word in ALL_OFFLOADS:
            names.add(word)
        else:
            raise ValueError(f"unknown offload {word!r}; known: {', '.join(OFFLOAD_NAMES)}, tso")
    return frozenset(names)


@dataclass(frozen=True)
class TapCaps:
    """What the tap is and what the user lets it do."""

    vnet_hdr: bool = True
    offloads: frozenset[str] = field(default=ALL_OFFLOADS)

    def may(self, name: str) -> bool:
        """True when the tap may be given offload `name` (it needs a vnet header)."""
        return self.vnet_hdr and name in self.offloads


def offered_features(caps: TapCaps, *, rsc: bool = False) -> int:
    """The virtio-net feature bits vionet offers a guest in front of this tap.

    With `rsc` (receive coalescing in C) RSC_EXT is offered too: a guest that
    takes it gets RSC_INFO packets, one with only GUEST_TSO4/6 GSO packets.
    """
    feats = RING_FEATURES | HOST_OFFLOADS | _b(vf.VIRTIO_NET_F_GUEST_CSUM)
    if rsc:
        feats |= _b(vf.VIRTIO_NET_F_RSC_EXT)
    if not caps.may("csum"):
        # Without partial checksums from the tap, RX GSO cannot be handed on.
        return feats
    if caps.may("tso4"):
        feats |= _b(vf.VIRTIO_NET_F_GUEST_TSO4)
    if caps.may("tso6"):
        feats |= _b(vf.VIRTIO_NET_F_GUEST_TSO6)
    if caps.may("ecn") and (caps.may("tso4") or caps.may("tso6")):
        feats |= _b(vf.VIRTIO_NET_F_GUEST_ECN)
    if caps.may("uso"):
        feats |= _b(vf.VIRTIO_NET_F_GUEST_USO4) | _b(vf.VIRTIO_NET_F_GUEST_USO6)
    return feats


def tun_offload_flags(acked: int, caps: TapCaps) -> int:
    """TUNSETOFFLOAD flags for a guest that negotiated `acked` (GUEST_* bits)."""

    def has(bit: int) -> bool:
        return bool(acked & _b(bit))

    if not caps.may("csum") or not has(vf.VIRTIO_NET_F_GUEST_CSUM):
        return 0
    flags = TUN_F_CSUM
    if caps.may("tso4") and has(vf.VIRTIO_NET_F_GUEST_TSO4):
        flags |= TUN_F_TSO4
    if caps.may("tso6") and has(vf.VIRTIO_NET_F_GUEST_TSO6):
        flags |= TUN_F_TSO6
    if caps.may("ecn") and has(vf.VIRTIO_NET_F_GUEST_ECN) and flags & (TUN_F_TSO4 | TUN_F_TSO6):
        flags |= TUN_F_TSO_ECN
    if (caps.may("uso") and has(vf.VIRTIO_NET_F_GUEST_USO4)
            and has(vf.VIRTIO_NET_F_GUEST_USO6)):
        flags |= TUN_F_USO4 | TUN_F_USO6
    return flags


@dataclass(frozen=True)
class TxPlan:
    """Guest TX: which virtio_net_hdr offloads the tap takes as they are."""

    vnet_hdr: bool
    csum: bool                  # NEEDS_CSUM may reach the tap
    gso_types: frozenset[int]   # VIRTIO_NET_HDR_GSO_* the tap may segment
    ecn: bool                   # GSO with the ECN bit may reach the tap

    @property
    def gso_mask(self) -> int:
        """Bit (1 << gso_type) for each pass-through type, as the C side wants it."""
        mask = 0
        for t in self.gso_types:
            mask |= 1 << t
        return mask


def tx_plan(caps: TapCaps) -> TxPlan:
    """What the tap may be given on guest TX; the rest is fixed in C first.

    A Linux tap with IFF_VNET_HDR accepts NEEDS_CSUM and every GSO type on
    write whatever TUNSETOFFLOAD says, so the only limits are the vnet header
    itself and what the user allowed.
    """
    if not caps.may("csum"):
        return TxPlan(vnet_hdr=caps.vnet_hdr, csum=False, gso_types=frozenset(), ecn=False)
    types = {t for name, t in (("tso4", VIRTIO_NET_HDR_GSO_TCPV4),
                               ("tso6", VIRTIO_NET_HDR_GSO_TCPV6),
                               ("uso", VIRTIO_NET_HDR_GSO_UDP_L4),
                               ("ufo", VIRTIO_NET_HDR_GSO_UDP)) if caps.may(name)}
    return TxPlan(vnet_hdr=True, csum=True, gso_types=frozenset(types), ecn=caps.may("ecn"))
