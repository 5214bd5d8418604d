"""Validators shared by the config parser and the privileged daemon's boundary.

Each function takes a value as written (or as received in a message), returns
it normalized, and raises InvalidValue with a message (no location) when the
value is not acceptable. They are pure except resolve_owner, which reads the
user and group databases (vmd resolves owners at parse time too).
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import re
from collections.abc import Iterable
from typing import TypeVar

from vmdnet.config.errors import InvalidValue
from vmdnet.config.limits import (
    CMDLINE_MAX,
    IFNAME_MAX,
    LOCAL_PREFIX6_MAX_LEN,
    LOCAL_PREFIX_MAX_LEN,
    MAX_DISKS_PER_VM,
    MAX_NICS_PER_VM,
    MAX_VMM_ARGS,
    MEMORY_MAX,
    MEMORY_MIN,
    NAME_MAX,
    PATH_MAX,
    RSC_INTERVAL_MAX_US,
    RSC_INTERVAL_MIN_US,
    SUN_PATH_MAX,
    MiB,
)
from vmdnet.config.model import (
    ALL_OFFLOADS,
    OFFLOAD_ALIASES,
    OFFLOAD_CSUM,
    OFFLOAD_ECN,
    OFFLOAD_TSO4,
    OFFLOAD_TSO6,
    DiskFormat,
    Owner,
)

# VM and switch names: they end up in socket names and logs, so keep them to
# a portable file-name alphabet, starting with a letter or digit.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Interface and group names: what ip(8) and the kernel both accept without
# quoting trouble. Linux itself refuses only "/", ":" and whitespace, but a
# stricter set is safer at the privileged boundary.
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LLADDR_RE = re.compile(r"[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){5}")
# scan_scaled(3)-style sizes: digits, optional fraction, optional unit.
_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?([BKMGTPE]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
# Units sizes are printed in, largest first (memory is a whole number of MiB).
_SIZE_PRINT_UNITS = (("T", 1024**4), ("G", 1024**3), ("M", 1024**2))
# An all-digits owner half is a numeric id, as chown(1) takes it.
_ID_RE = re.compile(r"[0-9]+")
# Linux uid_t/gid_t is 32 bits and (uid_t)-1 means "no change".
_ID_MAX = 2**32 - 2

# Each offload other than csum needs checksum offload (virtio 1.2, 5.1.3.1:
# HOST_TSO4 etc. require CSUM; the tap's TUNSETOFFLOAD refuses them without
# TUN_F_CSUM); ecn needs a TSO to apply to.
_NEEDS_CSUM = ALL_OFFLOADS - {OFFLOAD_CSUM}
_ECN_NEEDS_ONE_OF = frozenset({OFFLOAD_TSO4, OFFLOAD_TSO6})


def _no_control(text: str, what: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidValue(f"{what} contains a control character")


def _name(text: str, what: str) -> str:
    if not text:
        raise InvalidValue(f"{what} name is empty")
    if len(text) > NAME_MAX:
        raise InvalidValue(f"{what} name too long (at most {NAME_MAX}): {text!r}")
    if not _NAME_RE.fullmatch(text):
        raise InvalidValue(f"invalid {what} name: {text!r}")
    return text


def valid_vm_name(text: str) -> str:
    """A VM name: 1..NAME_MAX of [A-Za-z0-9._-], starting with a letter or digit."""
    return _name(text, "vm")


def valid_switch_name(text: str) -> str:
    """A switch name, same rules as a VM name."""
    return _name(text, "switch")


def valid_ifname(text: str | bytes) -> str:
    """A Linux network interface name (tap or bridge).

    At most IFNAME_MAX (15) characters of [A-Za-z0-9._-], starting with a
    letter or digit (so never "." or ".."). Bytes are decoded as ASCII.
    """
    name = _ascii(text, "interface name")
    if not name:
        raise InvalidValue("interface name is empty")
    if len(name) > IFNAME_MAX:
        raise InvalidValue(f"interface name too long (at most {IFNAME_MAX}): {name!r}")
    if not _IFNAME_RE.fullmatch(name):
        raise InvalidValue(f"invalid interface name: {name!r}")
    return name


def valid_ifgroup(text: str | bytes) -> str:
    """An interface group name: interface-name rules and, as in vmd, no trailing digit.

    (A group ending in a digit could be mistaken for an interface name.)
    """
    name = _ascii(text, "group name")
    try:
        valid_ifname(name)
    except InvalidValue:
        raise InvalidValue(f"invalid group name: {name!r}") from None
    if name[-1].isdigit():
        raise InvalidValue(f"invalid group name (ends in a digit): {name!r}")
    return name


def _ascii(text: str | bytes, what: str) -> str:
    if isinstance(text, bytes):
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidValue(f"{what} is not ASCII") from None
    return text


def valid_lladdr(value: str | bytes) -> bytes:
    """A unicast Ethernet address, as text (xx:xx:xx:xx:xx:xx) or 6 bytes.

    Multicast (including broadcast) and all-zero addresses are refused: a
    guest NIC with such a source address breaks every switch it is on.
    """
    if isinstance(value, bytes | bytearray):
        if len(value) != 6:
            raise InvalidValue(f"link-layer address must be 6 bytes, not {len(value)}")
        raw = bytes(value)
    else:
        if not _LLADDR_RE.fullmatch(value):
            raise InvalidValue(f"invalid link-layer address: {value!r}")
        raw = bytes(int(part, 16) for part in value.split(":"))
    if raw[0] & 0x01:
        raise InvalidValue(f"multicast link-layer address refused: {format_lladdr(raw)}")
    if raw == bytes(6):
        raise InvalidValue("all-zero link-layer address refused")
    return raw


def format_lladdr(raw: bytes) -> str:
    """6 bytes as the canonical lower-case xx:xx:xx:xx:xx:xx."""
    return ":".join(f"{b:02x}" for b in raw)


def valid_offloads(names: Iterable[str]) -> frozenset[str]:
    """A set of offload names, aliases expanded ("tso" = tso4 + tso6).

    Refuses unknown names, offloads without csum, and ecn without a TSO.
    An empty set is valid (no offload).
    """
    out: set[str] = set()
    for name in names:
        if name in OFFLOAD_ALIASES:
            out |= OFFLOAD_ALIASES[name]
        elif name in ALL_OFFLOADS:
            out.add(name)
        else:
            known = ", ".join(sorted(ALL_OFFLOADS | OFFLOAD_ALIASES.keys()))
            raise InvalidValue(f"unknown offload {name!r} (known: {known})")
    if out & _NEEDS_CSUM and OFFLOAD_CSUM not in out:
        needing = ", ".join(sorted(out & _NEEDS_CSUM))
        raise InvalidValue(f"offload {needing} requires csum")
    if OFFLOAD_ECN in out and not out & _ECN_NEEDS_ONE_OF:
        raise InvalidValue("offload ecn requires tso4 or tso6")
    return frozenset(out)


def parse_size(text: str) -> int:
    """A size with an optional binary unit (B K M G T P E), e.g. 512M, 1.5G; in bytes.

    Fractions are exact and the result is rounded down to whole bytes.
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise InvalidValue(f"invalid size: {text!r}")
    whole, frac, unit = match.group(1), match.group(2) or "", match.group(3).upper()
    scale = 1024 ** _SIZE_UNITS[unit]
    return (int(whole + frac) * scale) // (10 ** len(frac))


def format_size(size: int) -> str:
    """Bytes in the largest unit that divides them exactly (T, G, M), else with B."""
    for unit, scale in _SIZE_PRINT_UNITS:
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def valid_memory(size: int) -> int:
    """Guest memory in bytes: a whole number of MiB in [MEMORY_MIN, MEMORY_MAX]."""
    if size < MEMORY_MIN:
        raise InvalidValue(
            f"memory size too small: {format_size(size)} (at least {format_size(MEMORY_MIN)})"
        )
    if size > MEMORY_MAX:
        raise InvalidValue(
            f"memory size too large: {format_size(size)} (at most {format_size(MEMORY_MAX)})"
        )
    if size % MiB:
        raise InvalidValue(f"memory size is not a whole number of megabytes: {size}")
    return size


def valid_nifs(count: int) -> int:
    """A VM's interface count, 0..MAX_NICS_PER_VM."""
    if count < 0 or count > MAX_NICS_PER_VM:
        raise InvalidValue(f"too many interfaces: {count} (at most {MAX_NICS_PER_VM})")
    return count


def valid_ndisks(count: int) -> int:
    """A VM's disk count, 0..MAX_DISKS_PER_VM."""
    if count < 0 or count > MAX_DISKS_PER_VM:
        raise InvalidValue(f"too many disks: {count} (at most {MAX_DISKS_PER_VM})")
    return count


def valid_path(text: str, what: str = "path") -> str:
    """An absolute path without control characters, shorter than PATH_MAX.

    Paths must be absolute: the daemon runs from "/" and checks files when it
    uses them, so the parser neither resolves nor opens them.
    """
    _no_control(text, what)
    if not text.startswith("/"):
        raise InvalidValue(f"{what} must be absolute: {text!r}")
    if len(text.encode()) >= PATH_MAX:
        raise InvalidValue(f"{what} too long (at most {PATH_MAX - 1} bytes)")
    return text


def valid_socket_path(text: str) -> str:
    """A unix socket path: an absolute path that fits in sun_path."""
    valid_path(text, "socket path")
    if len(text.encode()) > SUN_PATH_MAX:
        raise InvalidValue(f"socket path too long (at most {SUN_PATH_MAX} bytes): {text!r}")
    return text


def valid_cmdline(text: str) -> str:
    """A kernel command line: printable, at most CMDLINE_MAX bytes."""
    _no_control(text, "kernel command line")
    if len(text.encode()) > CMDLINE_MAX:
        raise InvalidValue(f"kernel command line too long (at most {CMDLINE_MAX} bytes)")
    return text


def valid_vmm_args(args: Iterable[str]) -> tuple[str, ...]:
    """Extra VMM arguments: at most MAX_VMM_ARGS, no control characters."""
    out = tuple(args)
    if len(out) > MAX_VMM_ARGS:
        raise InvalidValue(f"too many vmm arguments: {len(out)} (at most {MAX_VMM_ARGS})")
    for arg in out:
        _no_control(arg, "vmm argument")
    return out


def valid_disk_format(text: str) -> DiskFormat:
    """raw or qcow2 (case-insensitive, as in vmd)."""
    try:
        return DiskFormat(text.lower())
    except ValueError:
        raise InvalidValue(f"unrecognized disk format: {text!r}") from None


def valid_rsc_interval(usec: int) -> int:
    """RSC coalescing interval in microseconds."""
    if usec < RSC_INTERVAL_MIN_US or usec > RSC_INTERVAL_MAX_US:
        raise InvalidValue(
            f"rsc interval out of range: {usec} "
            f"({RSC_INTERVAL_MIN_US}..{RSC_INTERVAL_MAX_US} microseconds)"
        )
    return usec


def valid_local_prefix(text: str) -> ipaddress.IPv4Network:
    """The IPv4 local prefix: ADDRESS/LEN, no host bits, LEN <= LOCAL_PREFIX_MAX_LEN."""
    net = _network(text, ipaddress.IPv4Network, "local prefix")
    if net.prefixlen > LOCAL_PREFIX_MAX_LEN:
        raise InvalidValue(f"local prefix too long: {text} (at most /{LOCAL_PREFIX_MAX_LEN})")
    return net


def valid_local_prefix6(text: str) -> ipaddress.IPv6Network:
    """The IPv6 local prefix: ADDRESS/LEN, no host bits, LEN <= 64 (vmd's rule)."""
    net = _network(text, ipaddress.IPv6Network, "local inet6 prefix")
    if net.prefixlen > LOCAL_PREFIX6_MAX_LEN:
        raise InvalidValue(
            f"local inet6 prefix too long: {text} (at most /{LOCAL_PREFIX6_MAX_LEN})"
        )
    return net


_N = TypeVar("_N", ipaddress.IPv4Network, ipaddress.IPv6Network)


def _network(text: str, kind: type[_N], what: str) -> _N:
    family = "IPv4" if kind is ipaddress.IPv4Network else "IPv6"
    if "/" not in text:
        raise InvalidValue(f"invalid {what}: {text!r} (ADDRESS/LEN expected)")
    try:
        net = kind(text, strict=False)
    except ValueError:
        raise InvalidValue(f"invalid {what}: {text!r} (not an {family} prefix)") from None
    if net.network_address != kind(text.partition("/")[0]).network_address:
        raise InvalidValue(f"invalid {what}: {text!r} (host bits set)")
    return net


def resolve_owner(spec: str) -> Owner:
    """USER, USER:GROUP or :GROUP, each half a name or a numeric id.

    Names are looked up in the user and group databases now, as vmd does;
    numeric ids are taken as they are.
    """
    user, sep, group = spec.partition(":")
    if not user and not group:
        raise InvalidValue(f"invalid owner: {spec!r}")
    if sep and not group:
        raise InvalidValue(f"invalid owner (empty group): {spec!r}")
    owner = Owner()
    if user:
        name, uid = _lookup(user, "user")
        owner = Owner(user=name, uid=uid)
    if group:
        gname, gid = _lookup(group, "group")
        owner = Owner(user=owner.user, uid=owner.uid, group=gname, gid=gid)
    return owner


def _lookup(text: str, what: str) -> tuple[str | None, int]:
    if _ID_RE.fullmatch(text):
        ident = int(text)
        if ident > _ID_MAX:
            raise InvalidValue(f"{what} id out of range: {text}")
        return None, ident
    try:
        if what == "user":
            return text, pwd.getpwnam(text).pw_uid
        return text, grp.getgrnam(text).gr_gid
    except (KeyError, ValueError):
        # KeyError: no such entry; ValueError: the name holds a NUL byte.
        raise InvalidValue(f"unknown {what}: {text!r}") from None
