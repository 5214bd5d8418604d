"""vmdnet configuration: the vm.conf(5)-style language → a typed, validated model.

Layer rule: pure. Reads the files it is told to (and their includes) and the
user/group databases for owners; never writes, opens devices or talks to
the network. Validators in vmdnet.config.validate are the same functions the
privileged daemon applies to values arriving at its boundary.

    config = parse_file("/etc/vmdnet.conf")     # ConfigError on any problem
    text = normalize(config)                     # what vmdnetd -n prints
"""

from __future__ import annotations

from importlib import resources

from vmdnet.config.check import check_main
from vmdnet.config.errors import ConfigError, Diagnostic, InvalidValue
from vmdnet.config.model import (
    ALL_OFFLOADS,
    OFFLOAD_ALIASES,
    Config,
    Disk,
    DiskFormat,
    Globals,
    Interface,
    Location,
    Owner,
    Switch,
    Vm,
    Vmm,
)
from vmdnet.config.normalize import normalize
from vmdnet.config.parser import parse_file, parse_text

EXAMPLE_CONFIG = "example.conf"


def default_config_text() -> str:
    """The example configuration shipped with the package (a switch and two VMs)."""
    return resources.files(__package__).joinpath(EXAMPLE_CONFIG).read_text(encoding="utf-8")


__all__ = [
    "ALL_OFFLOADS",
    "OFFLOAD_ALIASES",
    "Config",
    "ConfigError",
    "Diagnostic",
    "Disk",
    "DiskFormat",
    "Globals",
    "Interface",
    "InvalidValue",
    "Location",
    "Owner",
    "Switch",
    "Vm",
    "Vmm",
    "check_main",
    "default_config_text",
    "normalize",
    "parse_file",
    "parse_text",
]
