#!/usr/bin/env python3
"""Copy kernel modules and everything they depend on, in load order.

Used by build-guest.sh. Debian's linux-image packages ship no modules.dep (their postinst
runs depmod), and a fresh CI machine may lack kmod, so this reads each module's own
``depends=`` string from its ``.modinfo`` ELF section instead.

    moddeps.py MODDIR DESTDIR NAME...

MODDIR is ``lib/modules/<version>`` of the extracted package. Each requested module and its
dependencies are written uncompressed (busybox insmod cannot always read .ko.xz/.ko.zst) to
DESTDIR/<name>.ko, and DESTDIR/load-order lists the names, dependencies first.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import sys
from pathlib import Path

# Suffixes a Debian module file may carry; the uncompressed one first.
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")
# ELF64 header fields we read: e_shoff (u64 at 0x28), e_shentsize/e_shnum/e_shstrndx (u16 at
# 0x3a..0x3f). Section header entries: sh_name u32 at 0, sh_offset u64 at 0x18, sh_size at 0x20.
ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
# A dependency chain deeper than this means a cycle or a corrupt .modinfo.
MAX_DEPTH = 32


def module_name(path: Path) -> str:
    """The kernel's name for a module file: its stem without suffixes, '-' as '_'."""
    name = path.name
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def index_modules(moddir: Path) -> dict[str, Path]:
    """Map every module name under MODDIR/kernel to its file."""
    index: dict[str, Path] = {}
    for path in sorted((moddir / "kernel").rglob("*")):
        if path.is_file() and path.name.endswith(MODULE_SUFFIXES):
            index[module_name(path)] = path
    return index


def read_module(path: Path) -> bytes:
    """Return the uncompressed ELF image of a module file."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            sys.exit(f"moddeps: {path} is zstd-compressed and zstd is not installed")
        return subprocess.run([zstd, "-dc", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


def modinfo_section(elf: bytes) -> bytes:
    """Return the raw .modinfo section of a little-endian ELF64 module."""
    if elf[:4] != ELF_MAGIC or elf[4] != ELFCLASS64 or elf[5] != ELFDATA2LSB:
        raise ValueError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", elf, base)
        offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name, offset, size

    _, strtab_off, strtab_size = section(shstrndx)
    strtab = elf[strtab_off : strtab_off + strtab_size]
    for i in range(shnum):
        name, offset, size = section(i)
        if strtab[name : strtab.index(b"\0", name)] == b".modinfo":
            return elf[offset : offset + size]
    raise ValueError("no .modinfo section")


def depends(elf: bytes) -> list[str]:
    """The module names listed in the module's ``depends=`` modinfo string."""
    for entry in modinfo_section(elf).split(b"\0"):
        if entry.startswith(b"depends="):
            value = entry[len(b"depends=") :].decode()
            return [d.replace("-", "_") for d in value.split(",") if d]
    return []


def load_order(index: dict[str, Path], wanted: list[str]) -> list[str]:
    """Depth-first post-order over the dependency graph: dependencies come first."""
    order: list[str] = []

    def visit(name: str, depth: int) -> None:
        if name in order:
            return
        if depth > MAX_DEPTH:
            sys.exit(f"moddeps: dependency chain too deep at {name} (cycle?)")
        if name not in index:
            sys.exit(f"moddeps: module {name} not found (built in? misspelt?)")
        for dep in depends(read_module(index[name])):
            visit(dep, depth + 1)
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), 0)
    return order


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        sys.exit(__doc__)
    moddir, destdir, wanted = Path(argv[1]), Path(argv[2]), argv[3:]
    index = index_modules(moddir)
    order = load_order(index, wanted)
    destdir.mkdir(parents=True, exist_ok=True)
    for name in order:
        (destdir / f"{name}.ko").write_bytes(read_module(index[name]))
    (destdir / "load-order").write_text("".join(f"{name}\n" for name in order))
    print(" ".join(order))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
