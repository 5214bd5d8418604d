"""Output formats of vmdnetctl: tables (tabulate) for people, JSON and YAML for programs.

Pure functions from the daemon's answer (plain dicts and lists) to text.
JSON and YAML print the answer as it came; tables pick and abbreviate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from tabulate import tabulate

FORMATS = ("table", "json", "yaml")
# Shown for a value that is absent (no process, no counters).
NONE = "-"
# Feature names are long; the table strips these prefixes.
FEATURE_PREFIXES = ("VIRTIO_NET_F_", "VIRTIO_RING_F_", "VIRTIO_F_", "VHOST_USER_F_")
STATUS_HEADERS = ["ID", "PID", "MAXMEM", "STATE", "OWNER", "NAME", "INTERFACES"]
IFACE_HEADERS = ["VM", "IF", "TAP", "SWITCH", "LLADDR", "VIONET", "STARTS", "TAP OFFLOAD",
                 "TX PKTS", "TX BYTES", "RX PKTS", "RX BYTES", "SW SEGMENTED", "CSUM DONE",
                 "DROPS"]
UNITS = ("B", "K", "M", "G", "T")
KIB = 1024


def human_size(n: int | None) -> str:
    """Bytes as vmctl prints memory: 512M, 1.5G."""
    if n is None:
        return NONE
    value = float(n)
    for unit in UNITS:
        if value < KIB or unit == UNITS[-1]:
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        value /= KIB
    return f"{n}B"


def _text(v: Any) -> str:
    return NONE if v is None else str(v)


def status_table(vms: list[dict[str, Any]]) -> str:
    rows = []
    for vm in vms:
        ifaces = ", ".join(f"{i['tap']}({_text(i.get('vionet_pid'))})"
                           for i in vm.get("interfaces", []))
        rows.append([_text(vm.get("id")), _text(vm.get("pid")), human_size(vm.get("memory")),
                     vm.get("state", NONE), vm.get("owner", NONE), vm.get("name", NONE),
                     ifaces or NONE])
    return tabulate(rows, headers=STATUS_HEADERS, tablefmt="plain")


def _sum(stats: dict[str, Any], key: str) -> int:
    return sum(int(stats.get(d, {}).get(key, 0) or 0) for d in ("tx", "rx"))


def drops(stats: dict[str, Any] | None) -> dict[str, int]:
    """Non-zero drop counters by reason, TX and RX added up."""
    out: dict[str, int] = {}
    for d in ("tx", "rx"):
        for reason, n in (stats or {}).get(d, {}).get("drops", {}).items():
            if n:
                out[reason] = out.get(reason, 0) + int(n)
    return out


def iface_row(i: dict[str, Any]) -> list[str]:
    st = i.get("stats") or {}
    tx, rx = st.get("tx", {}), st.get("rx", {})
    dropped = drops(st)
    tap = st.get("tap", {})
    return [i.get("vm", NONE), _text(i.get("index")), i.get("tap", NONE),
            _text(i.get("switch")), i.get("lladdr", NONE), _text(i.get("vionet_pid")),
            _text(i.get("vionet_starts")),
            f"{tap['tun_offload_flags']:#x}" if "tun_offload_flags" in tap else NONE,
            _text(tx.get("packets")), _text(tx.get("bytes")),
            _text(rx.get("packets")), _text(rx.get("bytes")),
            str(_sum(st, "sw_segmented")) if st else NONE,
            str(_sum(st, "csum_completed")) if st else NONE,
            ",".join(f"{k}={v}" for k, v in sorted(dropped.items())) or ("0" if st else NONE)]


def short_features(names: list[str]) -> str:
    out = []
    for n in names:
        for p in FEATURE_PREFIXES:
            if n.startswith(p):
                n = n[len(p):]
                break
        out.append(n.lower())
    return ",".join(out)


def coalescing(i: dict[str, Any]) -> str | None:
    """One line of receive coalescing counters, when the interface coalesces."""
    rsc = (i.get("stats") or {}).get("rsc")
    if not rsc:
        return None

    def n(key: str) -> int:
        return int(rsc.get(f"rsc_{key}", 0))

    return (f"{i.get('vm')}/{i.get('index')}: coalescing ({rsc.get('mode')}, "
            f"{rsc.get('interval_us')} us): {n('received')} received, {n('coalesced')} "
            f"merged into {n('units_coalesced')} units, {n('dup_acks')} dup ACKs, "
            f"{n('timer_flushes')} timer flushes, {n('out_of_order')} out of order")


def interfaces_table(ifaces: list[dict[str, Any]]) -> str:
    table = tabulate([iface_row(i) for i in ifaces], headers=IFACE_HEADERS, tablefmt="plain")
    notes = []
    for i in ifaces:
        if i.get("stats"):
            notes.append(f"{i.get('vm')}/{i.get('index')}: features "
                         f"{short_features(i['stats'].get('negotiated_features', [])) or NONE}")
            line = coalescing(i)
            if line:
                notes.append(line)
    return "\n".join([table, *notes]) if notes else table


def message(result: Any) -> str:
    return str(result)


TABLES: dict[str, Callable[[Any], str]] = {
    "status": status_table,
    "show-interfaces": interfaces_table,
}


def render(command: str, result: Any, fmt: str) -> str:
    """The answer to COMMAND as FMT (one of FORMATS), without a final newline."""
    if fmt == "json":
        return json.dumps(result, indent=2, sort_keys=True)
    if fmt == "yaml":
        return yaml.safe_dump(result, sort_keys=True, default_flow_style=False).rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return TABLES.get(command, message)(result)
