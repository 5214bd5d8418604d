"""Events the vhost-user Backend gives the device (see backend.py, Theory of operation).

Fds in events are lent: the Backend owns and eventually closes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmdnet.vhost_user.protocol import MemoryRegion


@dataclass(frozen=True)
class VringConfig:
    """What the device needs to run one vring; fds are lent (None: unset / poll)."""

    index: int
    num: int
    desc_user_addr: int
    avail_user_addr: int
    used_user_addr: int
    base: int
    kick_fd: int | None
    call_fd: int | None
    err_fd: int | None
    packed: bool
    event_idx: bool


@dataclass(frozen=True)
class FeaturesChanged:
    """SET_FEATURES: the acked feature mask (net header size and offloads follow from it)."""

    features: int


@dataclass(frozen=True)
class MemTableChanged:
    """The memory table now is `regions`; map `added`, unmap `removed`."""

    regions: tuple[MemoryRegion, ...]
    added: tuple[MemoryRegion, ...]
    removed: tuple[MemoryRegion, ...]


@dataclass(frozen=True)
class VringReady:
    """Start processing vring `index` as configured."""

    index: int
    vring: VringConfig


@dataclass(frozen=True)
class VringStopped:
    """Vring `index` stopped (the device already returned last_avail_idx to stop_vring)."""

    index: int
    last_avail_idx: int


@dataclass(frozen=True)
class VringFdsChanged:
    """A ready vring got a new kick, call or err fd (None: none / poll)."""

    index: int
    kick_fd: int | None
    call_fd: int | None
    err_fd: int | None


@dataclass(frozen=True)
class MtuChanged:
    """NET_SET_MTU with a valid MTU."""

    mtu: int


@dataclass(frozen=True)
class Reset:
    """RESET_OWNER (rings only) or RESET_DEVICE / disconnect (device_state_cleared)."""

    device_state_cleared: bool


Event = (FeaturesChanged | MemTableChanged | VringReady | VringStopped | VringFdsChanged
         | MtuChanged | Reset)
