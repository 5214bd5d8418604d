"""cffi build script for the C helper (csrc/).

Every ``csrc/*.c`` is compiled into one extension, ``vmdnet._native._vn``.  Each
``x.c`` includes its own ``x.h``; the part of each header between the markers
``VN_CDEF_BEGIN`` and ``VN_CDEF_END`` is what cffi reads, so the compiler checks
the very declarations Python uses.  The package version is stamped into the
module (``vn_version()``) and checked at import.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CDEF_RE = re.compile(r"/\*\s*VN_CDEF_BEGIN\s*\*/(.*?)/\*\s*VN_CDEF_END\s*\*/", re.S)

# Strict warnings on our C only (cffi's generated glue is compiled with them too,
# so the conversion warnings that it trips are not turned into errors).
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wconversion", "-Wno-unused-parameter",
          "-fno-strict-aliasing"]


def _version() -> str:
    text = (ROOT / "vmdnet" / "__init__.py").read_text()
    m = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if not m:
        raise RuntimeError("no __version__ in vmdnet/__init__.py")
    return m.group(1)


def _cdefs() -> str:
    parts = []
    for h in sorted(CSRC.glob("*.h")):
        for block in CDEF_RE.findall(h.read_text()):
            parts.append(block)
    return "\n".join(parts)


def _sources() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.c"))]


ffibuilder = FFI()
ffibuilder.cdef(_cdefs())
ffibuilder.set_source(
    "vmdnet._native._vn",
    "\n".join(f'#include "{h.name}"' for h in sorted(CSRC.glob("*.h"))),
    sources=_sources(),
    include_dirs=[str(CSRC.relative_to(ROOT))],
    extra_compile_args=CFLAGS,
    define_macros=[("VN_VERSION", f'"{_version()}"')],
    # One file name whichever way the module is built (pip or this script):
    # a stale abi3 twin next to a fresh cpython-311 build would shadow it.
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
