"""The validators the parser and the privileged daemon share (vmdnet.config.validate)."""

from __future__ import annotations

import grp
import ipaddress
import pwd

import pytest

from vmdnet.config import ALL_OFFLOADS, InvalidValue, Owner
from vmdnet.config.limits import (
    IFNAME_MAX,
    MAX_NICS_PER_VM,
    MEMORY_MAX,
    MEMORY_MIN,
    NAME_MAX,
    SUN_PATH_MAX,
    MiB,
)
from vmdnet.config.validate import (
    format_lladdr,
    format_size,
    parse_size,
    resolve_owner,
    valid_ifgroup,
    valid_ifname,
    valid_lladdr,
    valid_local_prefix,
    valid_local_prefix6,
    valid_memory,
    valid_nifs,
    valid_offloads,
    valid_path,
    valid_socket_path,
    valid_vm_name,
)


@pytest.mark.parametrize("name", ["a", "vntap0", "br-lan.10", "x" * IFNAME_MAX, b"tap0"])
def test_ifname_ok(name: str | bytes) -> None:
    assert valid_ifname(name) == (name.decode() if isinstance(name, bytes) else name)


@pytest.mark.parametrize(
    "name",
    ["", "x" * (IFNAME_MAX + 1), ".", "..", "-a", "a b", "a/b", "a:b", "tap\n", "é", b"\xff"],
)
def test_ifname_refused(name: str | bytes) -> None:
    with pytest.raises(InvalidValue):
        valid_ifname(name)


def test_ifgroup() -> None:
    assert valid_ifgroup("vmnet") == "vmnet"
    for bad in ("vmnet0", "", "a b", "x" * (IFNAME_MAX + 1)):
        with pytest.raises(InvalidValue):
            valid_ifgroup(bad)


def test_vm_name() -> None:
    assert valid_vm_name("a" * NAME_MAX) == "a" * NAME_MAX
    for bad in ("", "a" * (NAME_MAX + 1), "_a", "a/b", "a b", "a\0"):
        with pytest.raises(InvalidValue):
            valid_vm_name(bad)


def test_lladdr_text_and_bytes() -> None:
    raw = valid_lladdr("FE:e1:b:d0:0:1")
    assert raw == bytes.fromhex("fee10bd00001")
    assert format_lladdr(raw) == "fe:e1:0b:d0:00:01"
    assert valid_lladdr(raw) == raw  # the boundary receives 6 bytes
    assert valid_lladdr(bytearray(raw)) == raw


@pytest.mark.parametrize(
    "bad",
    [
        "01:00:5e:00:00:01",  # IPv4 multicast
        "33:33:00:00:00:01",  # IPv6 multicast
        "ff:ff:ff:ff:ff:ff",  # broadcast
        "00:00:00:00:00:00",
        "fe:e1:ba:d0:00",
        "fe:e1:ba:d0:00:01:02",
        "fe:e1:ba:d0:00:0g",
        "fee1.bad0.0001",
        bytes(5),
        b"\x01" + bytes(5),
    ],
)
def test_lladdr_refused(bad: str | bytes) -> None:
    with pytest.raises(InvalidValue):
        valid_lladdr(bad)


def test_offloads() -> None:
    assert valid_offloads([]) == frozenset()
    assert valid_offloads(["csum", "tso"]) == {"csum", "tso4", "tso6"}
    assert valid_offloads(sorted(ALL_OFFLOADS)) == ALL_OFFLOADS
    assert valid_offloads(["csum", "tso6", "ecn"]) == {"csum", "tso6", "ecn"}
    for bad in (["gso"], ["tso4"], ["uso"], ["ufo"], ["csum", "ecn"], ["tso", "ecn"]):
        with pytest.raises(InvalidValue):
            valid_offloads(bad)


@pytest.mark.parametrize(
    "text,size",
    [
        ("0", 0),
        ("512", 512),
        ("1K", 1024),
        ("512M", 512 * MiB),
        ("512m", 512 * MiB),
        ("1.5G", 1536 * MiB),
        ("1.25k", 1280),
        ("2T", 2 << 40),
        ("1E", 1 << 60),
        ("7B", 7),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.G", ".5G", "1GB", "-1M", "1 G", "0x10"])
def test_parse_size_refused(text: str) -> None:
    with pytest.raises(InvalidValue):
        parse_size(text)


def test_memory_limits() -> None:
    assert valid_memory(MEMORY_MIN) == MEMORY_MIN
    assert valid_memory(MEMORY_MAX) == MEMORY_MAX
    for bad in (MEMORY_MIN - MiB, MEMORY_MAX + MiB, MEMORY_MIN + 1):
        with pytest.raises(InvalidValue):
            valid_memory(bad)
    assert format_size(1536 * MiB) == "1536M"
    assert format_size(MEMORY_MAX) == "1T"
    assert format_size(100) == "100B"


def test_nifs() -> None:
    assert valid_nifs(0) == 0
    assert valid_nifs(MAX_NICS_PER_VM) == MAX_NICS_PER_VM
    for bad in (-1, MAX_NICS_PER_VM + 1):
        with pytest.raises(InvalidValue):
            valid_nifs(bad)


def test_paths() -> None:
    assert valid_path("/srv/vm/a b.img") == "/srv/vm/a b.img"
    for bad in ("rel/a", "", "/a\nb", "/" + "a" * 4096):
        with pytest.raises(InvalidValue):
            valid_path(bad)
    ok = "/" + "s" * (SUN_PATH_MAX - 1)
    assert valid_socket_path(ok) == ok
    with pytest.raises(InvalidValue):
        valid_socket_path(ok + "s")


def test_prefixes() -> None:
    assert valid_local_prefix("198.18.0.0/15") == ipaddress.IPv4Network("198.18.0.0/15")
    assert valid_local_prefix6("fd00::/8") == ipaddress.IPv6Network("fd00::/8")
    for bad in ("198.18.0.1/15", "198.18.0.0", "198.18.0.0/32", "fd00::/8", "x/8", "1.2.3.4/-1"):
        with pytest.raises(InvalidValue):
            valid_local_prefix(bad)
    for bad in ("fd00::1/64", "fd00::/65", "198.18.0.0/15", "fd00::"):
        with pytest.raises(InvalidValue):
            valid_local_prefix6(bad)


def test_resolve_owner_against_the_system_databases() -> None:
    root = pwd.getpwuid(0).pw_name
    group0 = grp.getgrgid(0).gr_name
    assert resolve_owner(root) == Owner(user=root, uid=0)
    assert resolve_owner(f"{root}:{group0}") == Owner(user=root, uid=0, group=group0, gid=0)
    assert resolve_owner(f":{group0}") == Owner(group=group0, gid=0)
    assert resolve_owner("1234:5678") == Owner(uid=1234, gid=5678)
    for bad in (
        "",
        ":",
        "root:",
        "vmdnet-no-such-user",
        ":vmdnet-no-such-group",
        "a\0b",
        "99999999999",
    ):
        with pytest.raises(InvalidValue):
            resolve_owner(bad)
