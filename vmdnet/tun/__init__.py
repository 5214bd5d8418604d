"""tun/tap backends.

`vmdnet.tun.linux` opens Linux taps through the C helper (privileged code
only); its public names are re-exported here, loaded on first use so that
importing the pure `vmdnet.tun.caps` never needs the C helper.
"""

from __future__ import annotations

import importlib
from typing import Any

_LINUX_NAMES = (
    "VNET_HDR_SIZES", "Iff", "Tap", "TunF", "get_features", "get_iff", "get_vnet_hdr_sz",
    "open_tap", "set_offload", "set_persist", "set_queue", "set_vnet_hdr_sz",
)

__all__ = list(_LINUX_NAMES)


def __getattr__(name: str) -> Any:
    if name in _LINUX_NAMES:
        return getattr(importlib.import_module("vmdnet.tun.linux"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
