"""The canonical printout of a Config (what "vmdnetd -n" prints).

Deterministic: globals, then switches and VMs in file order, every setting
on its own line in a fixed order, defaults written out, macros expanded,
strings double-quoted. Parsing the output gives the same Config again.
"""

from __future__ import annotations

from vmdnet.config.model import Config, Globals, Interface, Owner, Switch, Vm
from vmdnet.config.validate import format_lladdr, format_size

_INDENT = "\t"


def quote(text: str) -> str:
    """text as a double-quoted string the lexer reads back unchanged."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_owner(owner: Owner) -> str:
    """USER[:GROUP] or :GROUP, each half by name when it was given by name."""
    user = owner.user if owner.user is not None else owner.uid
    group = owner.group if owner.group is not None else owner.gid
    text = "" if user is None else str(user)
    if group is not None:
        text += f":{group}"
    return quote(text)


def normalize(config: Config) -> str:
    """The canonical text of config, ending with a newline."""
    sections = [_globals(config.globals)]
    sections += [_switch(sw) for sw in config.switches]
    sections += [_vm(vm) for vm in config.vms]
    return "\n".join("".join(f"{line}\n" for line in lines) for lines in sections)


def _globals(g: Globals) -> list[str]:
    lines = [f"local prefix {g.local_prefix}"]
    if g.local_inet6:
        six = "local inet6"
        lines.append(six if g.local_prefix6 is None else f"{six} prefix {g.local_prefix6}")
    lines.append(f"socket owner {format_owner(g.socket_owner)}")
    lines.append(" ".join(["vmm", quote(g.vmm.path), *map(quote, g.vmm.args)]))
    return lines


def _switch(sw: Switch) -> list[str]:
    body = [f"interface {quote(sw.ifname)}"]
    if sw.group is not None:
        body.append(f"group {quote(sw.group)}")
    if sw.locked:
        body.append("locked lladdr")
    body.append("up" if sw.up else "down")
    body.append("enable" if sw.enabled else "disable")
    return [f"switch {quote(sw.name)} {{", *_indent(body), "}"]


def _vm(vm: Vm) -> list[str]:
    body = [f"memory {format_size(vm.memory)}"]
    for key in ("boot", "initrd", "cmdline"):
        value = getattr(vm, key)
        if value is not None:
            body.append(f"{key} {quote(value)}")
    for disk in vm.disks:
        fmt = "" if disk.format is None else f" format {disk.format.value}"
        body.append(f"disk {quote(disk.path)}{fmt}")
    body.append(f"interfaces {len(vm.interfaces)}")
    for iface in vm.interfaces:
        body += _interface(iface)
    body.append(f"owner {format_owner(vm.owner)}")
    body.append("enable" if vm.enabled else "disable")
    return [f"vm {quote(vm.name)} {{", *_indent(body), "}"]


def _interface(iface: Interface) -> list[str]:
    head = "local interface" if iface.local else "interface"
    if iface.name is not None:
        head += f" {quote(iface.name)}"
    body = []
    if iface.switch is not None:
        body.append(f"switch {quote(iface.switch)}")
    if iface.lladdr is not None or iface.locked:
        lladdr = "locked lladdr" if iface.locked else "lladdr"
        if iface.lladdr is not None:
            lladdr += f" {format_lladdr(iface.lladdr)}"
        body.append(lladdr)
    if iface.group is not None:
        body.append(f"group {quote(iface.group)}")
    body.append("up" if iface.up else "down")
    if iface.offloads:
        body.append(f"offload {{ {' '.join(sorted(iface.offloads))} }}")
    else:
        body.append("no offload")
    if iface.rsc_interval_us is None:
        body.append("no rsc")
    else:
        body.append(f"rsc interval {iface.rsc_interval_us}")
    if iface.vhost_user_socket is not None:
        body.append(f"vhost-user socket {quote(iface.vhost_user_socket)}")
    return [f"{head} {{", *_indent(body), "}"]


def _indent(lines: list[str]) -> list[str]:
    return [_INDENT + line for line in lines]
