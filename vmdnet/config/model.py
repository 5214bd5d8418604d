"""The typed configuration model: what the parser produces and the daemon reads.

Everything is normalized: sizes in bytes, link-layer addresses as 6 bytes,
prefixes as ipaddress networks, offloads as frozensets of canonical names.
Objects are frozen, so the daemon can share them between threads and compare
an old and a new configuration on reload. Locations do not take part in
equality: the same VM moved to another line is the same VM.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from vmdnet.config.errors import Diagnostic
from vmdnet.config.limits import DEFAULT_LOCAL_PREFIX, DEFAULT_MEMORY, DEFAULT_VMM

# Offload names. Each allows the feature in both directions: towards the
# host (VIRTIO_NET_F_CSUM, HOST_TSO4, ...) and towards the guest (GUEST_CSUM,
# GUEST_TSO4, ...). "tso" is shorthand for tso4 and tso6 and never stored.
OFFLOAD_CSUM = "csum"  # checksum offload (VIRTIO_NET_F_CSUM / GUEST_CSUM)
OFFLOAD_TSO4 = "tso4"  # TCP segmentation over IPv4 (HOST_TSO4 / GUEST_TSO4)
OFFLOAD_TSO6 = "tso6"  # TCP segmentation over IPv6 (HOST_TSO6 / GUEST_TSO6)
OFFLOAD_ECN = "ecn"  # TSO with ECN/CWR (HOST_ECN / GUEST_ECN)
OFFLOAD_USO = "uso"  # UDP segmentation, IPv4 and IPv6 (HOST_USO / GUEST_USO4+6)
OFFLOAD_UFO = "ufo"  # UDP fragmentation offload, legacy (HOST_UFO / GUEST_UFO)
ALL_OFFLOADS: frozenset[str] = frozenset(
    {OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_ECN, OFFLOAD_USO, OFFLOAD_UFO}
)
OFFLOAD_ALIASES: dict[str, frozenset[str]] = {"tso": frozenset({OFFLOAD_TSO4, OFFLOAD_TSO6})}


class DiskFormat(enum.Enum):
    """Disk image formats the VMM is told about (vmd: raw and qcow2)."""

    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Location:
    """Where a block or statement starts, for messages."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


NOWHERE = Location("<default>", 0)


@dataclass(frozen=True)
class Owner:
    """A user and/or group, resolved to ids at parse time (as vmd does).

    user/group keep the name as written (or None when given as a number or
    not given); uid/gid are None when that half was not given.
    """

    user: str | None = None
    uid: int | None = None
    group: str | None = None
    gid: int | None = None


# vmd: the control socket belongs to root (group 0); VMs belong to root, no group.
DEFAULT_SOCKET_OWNER = Owner(user="root", uid=0, group="root", gid=0)
DEFAULT_VM_OWNER = Owner(user="root", uid=0)


@dataclass(frozen=True)
class Vmm:
    """The VMM binary to run and the extra arguments put before ours."""

    path: str = DEFAULT_VMM
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Globals:
    """Global settings.

    local_prefix6 None with local_inet6 True: the daemon draws a random
    prefix from fd00::/8 at startup (vmd's behaviour); the parser never does.
    """

    local_prefix: ipaddress.IPv4Network = DEFAULT_LOCAL_PREFIX
    local_inet6: bool = False
    local_prefix6: ipaddress.IPv6Network | None = None
    socket_owner: Owner = DEFAULT_SOCKET_OWNER
    vmm: Vmm = field(default_factory=Vmm)


@dataclass(frozen=True)
class Switch:
    """A virtual switch: a Linux bridge the VM taps are attached to."""

    name: str
    ifname: str
    group: str | None = None
    locked: bool = False
    up: bool = True
    enabled: bool = True
    where: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Interface:
    """One VM network interface: a tap on the host, a vionet process, a virtio-net device.

    name None: the daemon names the tap. lladdr None: the daemon picks a
    random locally administered address. rsc_interval_us None: RSC off.
    """

    index: int
    name: str | None = None
    local: bool = False
    switch: str | None = None
    lladdr: bytes | None = None
    locked: bool = False
    group: str | None = None
    up: bool = True
    offloads: frozenset[str] = ALL_OFFLOADS
    rsc_interval_us: int | None = None
    vhost_user_socket: str | None = None
    where: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Disk:
    """A disk image; format None lets the VMM probe it."""

    path: str
    format: DiskFormat | None = None


@dataclass(frozen=True)
class Vm:
    """A virtual machine. boot None: firmware boots from the first disk."""

    name: str
    memory: int = DEFAULT_MEMORY
    boot: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    owner: Owner = DEFAULT_VM_OWNER
    enabled: bool = True
    where: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Config:
    """A whole parsed configuration; switches and VMs in file order."""

    globals: Globals = field(default_factory=Globals)
    switches: tuple[Switch, ...] = ()
    vms: tuple[Vm, ...] = ()
    warnings: tuple[Diagnostic, ...] = field(default=(), compare=False)

    def switch(self, name: str) -> Switch | None:
        """The switch called name, or None."""
        return next((s for s in self.switches if s.name == name), None)

    def vm(self, name: str) -> Vm | None:
        """The VM called name, or None."""
        return next((v for v in self.vms if v.name == name), None)

    def locked(self, iface: Interface) -> bool:
        """Whether iface drops frames with a foreign source address.

        True when the interface says "locked lladdr" or its switch does.
        """
        if iface.locked:
            return True
        sw = self.switch(iface.switch) if iface.switch is not None else None
        return sw is not None and sw.locked
