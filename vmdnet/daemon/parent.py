"""vmdnetd's parent process: configuration -> switches, taps, vionets, VMMs; the control loop.

Runs as root and stays so: it owns the taps (opens /dev/net/tun, TUNSETOFFLOAD
on behalf of the children), the bridges (netlink) and the vhost-user
listening sockets. It never reads guest data.

Theory of operation
-------------------
Per interface the parent creates the tap, listens on the interface's
vhost-user socket (chowned to the VM's owner) and spawns one vionet with a
privsep channel, over which it sends the tap fd (VIONET_TAP, SCM_RIGHTS).
The VMM (QEMU, launched here as the VM's owner, or any VMM for `vhost-user
socket PATH`) connects; the parent accepts and sends the connection to the
interface's vionet (VHOST_USER_FD), then closes its own copy.  A VMM that
reconnects (it restarted, or QEMU's reconnect after a drop) is one more
connection for the same vionet, which ends the old one and serves the new.
When a vionet dies its connection drops; the parent starts a new vionet
after a backoff that grows while vionets keep dying young, QEMU reconnects
(every vmm.RECONNECT_S) and the new vionet gets that connection.  A
connection accepted while no vionet runs waits (the newest one only).

reload parses the file first; a broken file is refused with its file:line
messages and nothing running changes. Otherwise VMs that changed are
restarted, removed ones stopped, new enabled ones started.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pwd
import select
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmdnet.config import Config, ConfigError, Interface, Vm, parse_file
from vmdnet.config.validate import InvalidValue, valid_vm_name
from vmdnet.daemon import control, netlink, vmm
from vmdnet.daemon.vionet import LOCAL_PREFIXLEN, VionetProc, VionetSpec, spawn
from vmdnet.privsep import sandbox
from vmdnet.privsep.codec import PrivsepError
from vmdnet.privsep.control import Request

log = logging.getLogger("vmdnetd")

# The loop wakes at least this often to reap children and run timers.
TICK_S = 1.0
# Restart backoff: a vionet that dies within BACKOFF_RESET_S of its start
# counts as a failure; the next start waits BACKOFF_BASE_S * 2**(failures-1),
# capped at BACKOFF_MAX_S so a fixed fault is picked up within a minute.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 60.0
BACKOFF_RESET_S = 30.0
# A vionet whose channel hit EOF is exiting; this long for its own exit status
# before it is killed (one that closed the channel on purpose and lives on).
CHANNEL_EOF_GRACE_S = 1.0
# Guest MACs vmdnetd makes up: locally administered fe:e1:ba:d0 (as vmd), host
# side of each tap fe:e1:ba:d1:<vm id>:<interface index>.
GUEST_MAC_PREFIX = bytes.fromhex("fee1bad0")
HOST_MAC_PREFIX = bytes.fromhex("fee1bad1")
# One byte each of the host MAC: vm ids and interface indexes above wrap.
MAC_BYTE = 0xFF
# VM states shown by status.
STATE_RUNNING = "running"
STATE_NO_VMM = "running (no VMM)"  # nothing to boot: interfaces for an external VMM
STATE_STOPPED = "stopped"
STATE_EXITED = "exited"  # the VMM ended by itself
STATE_DISABLED = "disabled"  # "disable" in the configuration, never started


@dataclass
class Options:
    """How the daemon was started."""

    config_path: str
    control_socket: str
    rundir: str
    chroot: str = sandbox.DEFAULT_CHROOT
    user: str = sandbox.DEFAULT_USER
    verbose: bool = False
    macros: dict[str, str] = field(default_factory=dict)


@dataclass
class IfaceState:
    """One interface at runtime."""

    id: int
    vm_name: str
    conf: Interface
    ifname: str
    mac: bytes
    sock_path: str
    local_addr: ipaddress.IPv4Interface | None = None
    tap: Any = None
    listener: socket.socket | None = None
    vionet: VionetProc | None = None
    pending: socket.socket | None = None
    restart_at: float = 0.0
    failures: int = 0
    starts: int = 0
    last_exit: int | None = None


@dataclass
class VmState:
    """One VM at runtime."""

    id: int
    conf: Vm
    paths: vmm.VmPaths
    ifaces: list[IfaceState] = field(default_factory=list)
    proc: Any = None
    state: str = STATE_STOPPED
    last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.state in (STATE_RUNNING, STATE_NO_VMM)


def _vm_changed(old: Config, new: Config, vm: Vm) -> bool:
    """Whether VM must restart on reload: it changed, went away, or a switch one of its
    interfaces is on changed (its taps would stay on the old bridge)."""
    if new.vm(vm.name) != vm:
        return True
    switches = {i.switch for i in vm.interfaces if i.switch is not None}
    return any(old.switch(s) != new.switch(s) for s in switches)


def backoff(failures: int) -> float:
    if failures <= 0:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))


class Parent:
    """The daemon's state and its selector loop."""

    def __init__(self, config: Config, opts: Options) -> None:
        self.config = config
        self.opts = opts
        self.sel = selectors.DefaultSelector()
        self.vms: dict[str, VmState] = {}
        self.bridges: set[str] = set()  # the bridges this daemon created
        self.clients: dict[int, control.Client] = {}
        self.running = True
        self._next_vm_id = 1
        self._next_iface_id = 1
        self.ids = sandbox.ensure_user(opts.user)
        sandbox.ensure_empty_dir(opts.chroot)
        os.makedirs(opts.rundir, mode=0o755, exist_ok=True)
        self.sig_r, self.sig_w = socket.socketpair()
        self.ctl: socket.socket | None = None

    # --- start up and shut down ----------------------------------------------------
    def start(self) -> None:
        self._signals()
        owner = self.config.globals.socket_owner
        self.ctl = control.listen(self.opts.control_socket, owner.uid, owner.gid)
        self.sel.register(self.ctl, selectors.EVENT_READ, ("ctl", None))
        self._apply_switches(self.config)
        for vm in self.config.vms:
            if vm.enabled:
                self._try_start(vm)

    def _signals(self) -> None:
        for s in (self.sig_r, self.sig_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self.sig_w.fileno())
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(s, lambda *_: None)
        self.sel.register(self.sig_r, selectors.EVENT_READ, ("signal", None))

    def shutdown(self) -> None:
        for name in list(self.vms):
            self.stop_vm(name)
        for br in sorted(self.bridges):
            try:
                netlink.delete_link(br)
            except netlink.NetError as exc:
                log.warning("%s", exc)
        self.bridges.clear()
        if self.ctl is not None:
            self.sel.unregister(self.ctl)
            self.ctl.close()
            self.ctl = None
            try:
                os.unlink(self.opts.control_socket)
            except FileNotFoundError:
                pass
        for c in self.clients.values():
            c.sock.close()
        self.clients.clear()

    # --- switches ----------------------------------------------------------------
    def _apply_switches(self, config: Config) -> None:
        for sw in config.switches:
            if sw.enabled and netlink.ensure_bridge(sw.ifname, sw.group, sw.up):
                self.bridges.add(sw.ifname)
        # Only bridges created here are deleted; one that existed before is left alone.
        wanted = {sw.ifname for sw in config.switches if sw.enabled}
        for br in sorted(self.bridges - wanted):
            netlink.delete_link(br)
            self.bridges.discard(br)

    # --- VMs ---------------------------------------------------------------------
    def _try_start(self, vm: Vm) -> str | None:
        try:
            self.start_vm(vm)
        except (OSError, netlink.NetError, ValueError) as exc:
            log.error("vm %s: cannot start: %s", vm.name, exc)
            self.stop_vm(vm.name)
            return f"vm {vm.name}: cannot start: {exc}"
        return None

    def _owner_ids(self, vm: Vm) -> tuple[int, int]:
        uid = vm.owner.uid if vm.owner.uid is not None else 0
        if vm.owner.gid is not None:
            return uid, vm.owner.gid
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, uid

    def start_vm(self, vm: Vm) -> None:
        """Taps, listeners and the VMM of VM."""
        if vm.name in self.vms and self.vms[vm.name].running:
            return
        old = self.vms.get(vm.name)
        st = VmState(old.id if old else self._take_vm_id(), vm,
                     vmm.VmPaths(os.path.join(self.opts.rundir, vm.name)))
        self.vms[vm.name] = st
        uid, gid = self._owner_ids(vm)
        os.makedirs(st.paths.dir, mode=0o700, exist_ok=True)
        os.chown(st.paths.dir, uid, gid)
        st.ifaces = list(self._ifaces(st))
        for ifs in st.ifaces:
            self._open_iface(ifs, uid, gid)
        st.state = STATE_RUNNING
        if vm.boot is None and not vm.disks:
            st.state = STATE_NO_VMM
            return
        nics = [(ifs.sock_path, ifs.mac) for ifs in st.ifaces]
        g = self.config.globals.vmm
        argv = vmm.qemu_argv(vm, g.path, g.args, st.paths, nics)
        st.proc = vmm.launch(argv, uid, gid, st.paths)
        log.info("vm %s: VMM pid %d started as uid %d", vm.name, st.proc.pid, uid)

    def _take_vm_id(self) -> int:
        n = self._next_vm_id
        self._next_vm_id += 1
        return n

    def _ifaces(self, st: VmState) -> Iterator[IfaceState]:
        for conf in st.conf.interfaces:
            iid = self._next_iface_id
            self._next_iface_id += 1
            ifname = conf.name or f"vnt{st.id}i{conf.index}"
            mac = conf.lladdr or GUEST_MAC_PREFIX + os.urandom(2)
            sock = conf.vhost_user_socket or os.path.join(st.paths.dir, f"net{conf.index}.sock")
            yield IfaceState(iid, st.conf.name, conf, ifname, mac, sock,
                             local_addr=self._local_addr(st.conf, conf))

    def _local_addr(self, vm: Vm, conf: Interface) -> ipaddress.IPv4Interface | None:
        """The host end of a local interface: the n-th /31 of `local prefix`."""
        if not conf.local:
            return None
        n = 0
        for v in self.config.vms:
            for i in v.interfaces:
                if v.name == vm.name and i.index == conf.index:
                    prefix = self.config.globals.local_prefix
                    net = ipaddress.IPv4Network(
                        (int(prefix.network_address) + 2 * n, LOCAL_PREFIXLEN))
                    if not net.subnet_of(prefix):
                        raise ValueError(f"local prefix {prefix} exhausted")
                    return ipaddress.IPv4Interface((net.network_address, LOCAL_PREFIXLEN))
                n += int(i.local)
        return None

    def _open_iface(self, ifs: IfaceState, uid: int, gid: int) -> None:
        conf = ifs.conf
        host_mac = HOST_MAC_PREFIX + bytes([self.vms[ifs.vm_name].id & MAC_BYTE,
                                            conf.index & MAC_BYTE])
        sw = self.config.switch(conf.switch) if conf.switch else None
        ifs.tap = netlink.open_tap(netlink.TapSpec(
            ifname=ifs.ifname, lladdr=host_mac, bridge=sw.ifname if sw else None,
            group=conf.group, up=conf.up, address=ifs.local_addr))
        try:
            os.unlink(ifs.sock_path)
        except FileNotFoundError:
            pass
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ifs.listener = lsock
        lsock.bind(ifs.sock_path)
        os.chown(ifs.sock_path, uid, gid)
        os.chmod(ifs.sock_path, 0o600)
        lsock.listen(1)
        lsock.setblocking(False)
        self.sel.register(lsock, selectors.EVENT_READ, ("vhost", ifs))
        self._maybe_spawn(ifs)

    def stop_vm(self, name: str) -> None:
        """Stop the VMM, the vionets, close listeners and taps. Idempotent."""
        st = self.vms.get(name)
        if st is None:
            return
        if st.proc is not None:
            vmm.stop(st.proc)
            st.last_exit = st.proc.returncode
            st.proc = None
        for ifs in st.ifaces:
            self._close_iface(ifs)
        st.ifaces = []
        st.state = STATE_STOPPED
        log.info("vm %s stopped", name)

    def _close_iface(self, ifs: IfaceState) -> None:
        self._stop_vionet(ifs)
        if ifs.pending is not None:
            ifs.pending.close()
            ifs.pending = None
        if ifs.listener is not None:
            self.sel.unregister(ifs.listener)
            ifs.listener.close()
            ifs.listener = None
            try:
                os.unlink(ifs.sock_path)
            except FileNotFoundError:
                pass
        if ifs.tap is not None:
            ifs.tap.close()
            ifs.tap = None

    # --- vionet children ---------------------------------------------------------------
    def _spec(self, ifs: IfaceState) -> VionetSpec:
        return VionetSpec(iface_id=ifs.id, tap_fd=ifs.tap.fd, tap_name=ifs.tap.name,
                          vnet_hdr_sz=ifs.tap.vnet_hdr_sz, offloads=ifs.conf.offloads,
                          mac=ifs.mac, sandbox=self.ids, chroot=self.opts.chroot,
                          log_path=os.path.join(self.vms[ifs.vm_name].paths.dir,
                                                f"vionet{ifs.conf.index}.log"),
                          verbose=self.opts.verbose, locked=self.config.locked(ifs.conf),
                          local_addr=ifs.local_addr,
                          rsc_interval_us=ifs.conf.rsc_interval_us)

    def _on_vhost_connection(self, ifs: IfaceState) -> None:
        assert ifs.listener is not None
        try:
            conn, _ = ifs.listener.accept()
        except BlockingIOError:
            return
        if ifs.pending is not None:
            ifs.pending.close()
        ifs.pending = conn
        self._hand_over(ifs)

    def _hand_over(self, ifs: IfaceState) -> None:
        """Send the waiting VMM connection to the interface's vionet, if one runs."""
        v = ifs.vionet
        if ifs.pending is None or v is None:
            return
        conn, ifs.pending = ifs.pending, None
        try:
            v.send_connection(conn)
            log.info("interface %s: VMM connection handed to vionet %d", ifs.ifname, v.pid)
        except OSError as exc:
            # The vionet is going away; the VMM sees the drop and reconnects.
            log.warning("interface %s: vionet %d takes no connection: %s", ifs.ifname,
                        v.pid, exc)
        finally:
            conn.close()

    def _maybe_spawn(self, ifs: IfaceState) -> None:
        if (ifs.vionet is not None or ifs.tap is None or ifs.listener is None
                or time.monotonic() < ifs.restart_at):
            return
        try:
            ifs.vionet = spawn(self._spec(ifs))
        except (OSError, InvalidValue) as exc:
            log.error("interface %s: cannot start vionet: %s", ifs.ifname, exc)
            ifs.failures += 1
            ifs.restart_at = time.monotonic() + backoff(ifs.failures)
            return
        ifs.starts += 1
        self.sel.register(ifs.vionet.channel, selectors.EVENT_READ, ("vionet", ifs))
        self._hand_over(ifs)

    def _stop_vionet(self, ifs: IfaceState) -> None:
        v = ifs.vionet
        if v is None:
            return
        self.sel.unregister(v.channel)
        v.stop()
        ifs.last_exit = v.proc.returncode
        ifs.vionet = None

    def _on_vionet_frame(self, ifs: IfaceState) -> None:
        v = ifs.vionet
        assert v is not None
        # The event may be stale (a command in the same batch replaced the child).
        if not select.select([v.channel], [], [], 0)[0]:
            return
        try:
            msgs = v.channel.recv()
            if msgs is not None:
                v.handle(msgs)
                return
        except (PrivsepError, OSError) as exc:
            log.error("vionet %d: %s; killing it", v.pid, exc)
            v.proc.kill()
        # A closed channel: the child is exiting, or closed it on purpose and must not
        # keep the parent waiting; a vionet without its channel is of no use.
        try:
            v.proc.wait(CHANNEL_EOF_GRACE_S)
        except subprocess.TimeoutExpired:
            v.proc.kill()
            v.proc.wait()
        self._vionet_died(ifs)

    def _vionet_died(self, ifs: IfaceState) -> None:
        v = ifs.vionet
        assert v is not None
        self.sel.unregister(v.channel)
        v.channel.close()
        ifs.vionet = None
        ifs.last_exit = v.proc.returncode
        lived = time.monotonic() - v.started
        ifs.failures = ifs.failures + 1 if lived < BACKOFF_RESET_S else 1
        ifs.restart_at = time.monotonic() + backoff(ifs.failures)
        log.warning("vionet %d for %s exited with %s after %.1f s; next start in %.1f s",
                    v.pid, ifs.ifname, v.proc.returncode, lived, backoff(ifs.failures))

    def _reap(self) -> None:
        for st in self.vms.values():
            for ifs in st.ifaces:
                if ifs.vionet is not None and ifs.vionet.proc.poll() is not None:
                    self._vionet_died(ifs)
                self._maybe_spawn(ifs)
            if st.proc is not None and st.proc.poll() is not None:
                st.last_exit = st.proc.returncode
                log.warning("vm %s: VMM exited with %s", st.conf.name, st.last_exit)
                st.proc = None
                st.state = STATE_EXITED

    # --- commands -------------------------------------------------------------------
    def handle(self, req: Request) -> Any:
        if req.name is not None:
            try:
                valid_vm_name(req.name)
            except InvalidValue as exc:
                raise control.CommandFailed(str(exc)) from None
        if req.command == "status":
            return self.status(req.name)
        if req.command == "show-interfaces":
            return self.show_interfaces(req.name)
        if req.command == "start":
            return self.cmd_start(req.name or "")
        if req.command == "stop":
            return self.cmd_stop(req.name or "")
        if req.command == "reload":
            return self.reload()
        if req.command == "log":
            return self.set_verbose(req.arg == "verbose")
        raise control.CommandFailed(f"unknown command {req.command}")

    def _selected(self, name: str | None) -> list[Vm]:
        vms = [vm for vm in self.config.vms if name is None or vm.name == name]
        if name is not None and not vms:
            raise control.CommandFailed(f"no vm called {name}")
        return vms

    def status(self, name: str | None) -> list[dict[str, Any]]:
        out = []
        for vm in self._selected(name):
            st = self.vms.get(vm.name)
            owner = vm.owner.user or (str(vm.owner.uid) if vm.owner.uid is not None else "root")
            out.append({
                "id": st.id if st else None, "name": vm.name,
                "pid": st.proc.pid if st and st.proc else None,
                "state": st.state if st else (STATE_STOPPED if vm.enabled else STATE_DISABLED),
                "owner": owner, "memory": vm.memory,
                "interfaces": [{"tap": i.ifname, "vionet_pid": i.vionet.pid if i.vionet else None}
                               for i in (st.ifaces if st else [])],
            })
        return out

    def show_interfaces(self, name: str | None) -> list[dict[str, Any]]:
        out = []
        for vm in self._selected(name):
            st = self.vms.get(vm.name)
            for ifs in st.ifaces if st else []:
                v = ifs.vionet
                out.append({
                    "vm": vm.name, "index": ifs.conf.index, "tap": ifs.ifname,
                    "switch": ifs.conf.switch, "lladdr": vmm.mac_text(ifs.mac),
                    "offloads": sorted(ifs.conf.offloads), "socket": ifs.sock_path,
                    "local": str(ifs.local_addr) if ifs.local_addr else None,
                    "vionet_pid": v.pid if v else None, "vionet_starts": ifs.starts,
                    "last_exit": ifs.last_exit,
                    "refused_requests": v.refused if v else 0,
                    "stats": v.query_stats() if v else None,
                })
        return out

    def cmd_start(self, name: str) -> str:
        (vm,) = self._selected(name)
        st = self.vms.get(name)
        if st is not None and st.running:
            raise control.CommandFailed(f"vm {name} is already running")
        if st is not None:
            self.stop_vm(name)
        err = self._try_start(vm)
        if err:
            raise control.CommandFailed(err)
        return f"vm {name} started"

    def cmd_stop(self, name: str) -> str:
        self._selected(name)
        st = self.vms.get(name)
        if st is None or not st.running:
            raise control.CommandFailed(f"vm {name} is not running")
        self.stop_vm(name)
        return f"vm {name} stopped"

    def reload(self) -> str:
        try:
            new = parse_file(self.opts.config_path, self.opts.macros)
        except ConfigError as exc:
            msg = "\n".join(str(d) for d in exc.errors)
            log.error("reload refused; nothing changed:\n%s", msg)
            raise control.CommandFailed(f"configuration refused, nothing changed:\n{msg}") from None
        old = self.config
        self.config = new
        changed = [v.name for v in old.vms if _vm_changed(old, new, v)]
        for name in changed:
            self.stop_vm(name)
            if new.vm(name) is None:
                self.vms.pop(name, None)
        try:
            self._apply_switches(new)
        except netlink.NetError as exc:
            log.error("reload: %s", exc)
        errors = []
        for vm in new.vms:
            if vm.enabled and (vm.name in changed or old.vm(vm.name) is None):
                err = self._try_start(vm)
                if err:
                    errors.append(err)
        if errors:
            raise control.CommandFailed("\n".join(errors))
        return f"configuration reloaded ({len(changed)} vm(s) changed)"

    def set_verbose(self, verbose: bool) -> str:
        self.opts.verbose = verbose
        logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
        for st in self.vms.values():
            for ifs in st.ifaces:
                if ifs.vionet is not None:
                    ifs.vionet.set_verbose(verbose)
        return f"logging {'verbose' if verbose else 'brief'}"

    # --- the loop --------------------------------------------------------------------
    def _on_signal(self) -> None:
        try:
            data = self.sig_r.recv(64)
        except BlockingIOError:
            return
        for b in data:
            if b in (signal.SIGTERM, signal.SIGINT):
                self.running = False
            elif b == signal.SIGHUP:
                try:
                    log.info("SIGHUP: %s", self.reload())
                except control.CommandFailed as exc:
                    log.error("%s", exc)

    def _on_ctl(self) -> None:
        assert self.ctl is not None
        try:
            sock, _ = self.ctl.accept()
        except BlockingIOError:
            return
        if len(self.clients) >= control.MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        client = control.Client(sock, control.peer_uid(sock))
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, ("client", client))

    def _on_client(self, client: control.Client) -> None:
        if not control.receive(client):
            return
        self._drop_client(client)
        control.finish(client, control.answer(client, self.handle))

    def _drop_client(self, client: control.Client) -> None:
        self.sel.unregister(client.sock)
        self.clients.pop(client.sock.fileno(), None)

    def _expire_clients(self) -> None:
        now = time.monotonic()
        for client in list(self.clients.values()):
            if now - client.since > control.CLIENT_TIMEOUT_S:
                self._drop_client(client)
                client.sock.close()

    def run(self) -> int:
        while self.running:
            for key, _ in self.sel.select(TICK_S):
                kind, obj = key.data
                if kind == "signal":
                    self._on_signal()
                elif kind == "ctl":
                    self._on_ctl()
                elif kind == "client":
                    self._on_client(obj)
                elif kind == "vhost" and obj.listener is not None:
                    self._on_vhost_connection(obj)
                elif kind == "vionet" and obj.vionet is not None:
                    self._on_vionet_frame(obj)
            self._reap()
            self._expire_clients()
        return 0
