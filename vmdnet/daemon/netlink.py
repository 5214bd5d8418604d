"""The parent's network set-up through netlink (pyroute2): bridges, taps, addresses.

Runs as root in vmdnetd's network namespace. Every name it is given has
been through vmdnet.config.validate at parse time; valid_ifname is applied
again here, at the boundary to the kernel.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmdnet.config.validate import valid_ifgroup, valid_ifname
from vmdnet.tun import linux as tun

log = logging.getLogger(__name__)

# Where iproute2 keeps numeric interface group names (ip link set group NAME).
GROUP_FILES = ("/etc/iproute2/group", "/usr/share/iproute2/group")
# IFLA_GROUP is a u32; 0 is "default".
GROUP_MAX = 2**32 - 1
# The virtio_net_hdr size taps start with (VERSION_1 with num_buffers); vionet
# asks the parent to change it when the guest negotiates otherwise.
TAP_VNET_HDR_SZ = 12
# ifalias text for an interface group that has no number in GROUP_FILES.
ALIAS_PREFIX = "vmdnet group "


class NetError(RuntimeError):
    """A netlink or tun operation failed."""


def group_number(name: str) -> int | None:
    """The numeric Linux link group called NAME in iproute2's table, or None."""
    valid_ifgroup(name)
    for path in GROUP_FILES:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) == 2 and words[1] == name and words[0].isdigit():
                n = int(words[0])
                if n <= GROUP_MAX:
                    return n
    return None


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _set_group(ipr: IPRoute, idx: int, group: str | None) -> None:
    if group is None:
        return
    number = group_number(group)
    if number is not None:
        ipr.link("set", index=idx, group=number)
    else:
        # No numeric group of that name: record it where `ip link` shows it.
        ipr.link("set", index=idx, ifalias=ALIAS_PREFIX + group)


def ensure_bridge(ifname: str, group: str | None, up: bool) -> bool:
    """Create bridge IFNAME if missing (STP off), set its group and state.

    True if it was created here (and so is ours to delete).
    """
    valid_ifname(ifname)
    created = False
    try:
        with IPRoute() as ipr:
            idx = _index(ipr, ifname)
            if idx is None:
                ipr.link("add", ifname=ifname, kind="bridge", br_stp_state=0)
                idx = _index(ipr, ifname)
                created = True
                log.info("created bridge %s", ifname)
            _set_group(ipr, idx, group)
            ipr.link("set", index=idx, state="up" if up else "down")
    except NetlinkError as exc:
        raise NetError(f"bridge {ifname}: {exc}") from exc
    return created


def delete_link(ifname: str) -> None:
    """Remove IFNAME if it exists."""
    try:
        with IPRoute() as ipr:
            idx = _index(ipr, ifname)
            if idx is not None:
                ipr.link("del", index=idx)
    except NetlinkError as exc:
        raise NetError(f"delete {ifname}: {exc}") from exc


@dataclass
class TapSpec:
    """What a tap should look like on the host side."""

    ifname: str
    lladdr: bytes
    bridge: str | None = None
    group: str | None = None
    up: bool = True
    address: ipaddress.IPv4Interface | None = None


def open_tap(spec: TapSpec) -> tun.Tap:
    """Create the tap (IFF_VNET_HDR), configure it over netlink, return its open fd.

    The interface lives as long as the returned fd (and copies of it) is open.
    """
    valid_ifname(spec.ifname)
    tap = tun.open_tap(spec.ifname, vnet_hdr=True, vnet_hdr_sz=TAP_VNET_HDR_SZ)
    try:
        os.set_inheritable(tap.fd, False)
        _configure(tap.name, spec)
    except BaseException:
        tap.close()
        raise
    return tap


def _configure(name: str, spec: TapSpec) -> None:
    try:
        with IPRoute() as ipr:
            idx = _index(ipr, name)
            if idx is None:
                raise NetError(f"tap {name} vanished")
            mac = ":".join(f"{b:02x}" for b in spec.lladdr)
            ipr.link("set", index=idx, address=mac)
            if spec.bridge is not None:
                br = _index(ipr, valid_ifname(spec.bridge))
                if br is None:
                    raise NetError(f"tap {name}: bridge {spec.bridge} does not exist")
                ipr.link("set", index=idx, master=br)
            _set_group(ipr, idx, spec.group)
            if spec.address is not None:
                ipr.addr("replace", index=idx, address=str(spec.address.ip),
                         prefixlen=spec.address.network.prefixlen)
            ipr.link("set", index=idx, state="up" if spec.up else "down")
    except NetlinkError as exc:
        raise NetError(f"tap {name}: {exc}") from exc
