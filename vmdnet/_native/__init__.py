"""Loader for the C helper: the cffi module, a version check, errno to exceptions.

Nothing else lives here: the meaning of each C entry point belongs to the layer
that wraps it (``vmdnet.offload``, ``vmdnet.tun`` ...).
"""

from __future__ import annotations

import errno
import os

import vmdnet

try:
    from vmdnet._native._vn import ffi, lib
except ImportError as exc:  # pragma: no cover - only when the build is missing
    raise ImportError(
        "the vmdnet C helper is not built; run `make` (pip install -e .) first"
    ) from exc

_built = ffi.string(lib.vn_version()).decode()
if _built != vmdnet.__version__:
    raise ImportError(
        f"vmdnet C helper was built for {_built}, the package is {vmdnet.__version__}: rebuild"
    )


def check_errno(rc: int, what: str) -> int:
    """Turn a negative-errno return from C into OSError; pass other values through."""
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


__all__ = ["ffi", "lib", "check_errno", "errno"]
