"""`--print-capabilities` output, per vhost-user.rst "Backend program conventions".

The JSON follows @VHostUserBackendCapabilities of QEMU's vhost-user.json: a
"type" from @VHostUserBackendType ("net" for us).  The schema defines no
"features" list for net back-ends, so none is printed.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

BACKEND_TYPE = "net"


def capabilities() -> dict[str, object]:
    """The capabilities object of a vhost-user net back-end."""
    return {"type": BACKEND_TYPE}


def print_capabilities(file: TextIO | None = None) -> None:
    """Write the capabilities JSON to `file` (stdout by default); the caller then exits 0."""
    out = file if file is not None else sys.stdout
    out.write(json.dumps(capabilities(), indent=2) + "\n")
    out.flush()
