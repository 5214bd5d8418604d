"""Boot and drive the tiny Linux test guest (Debian 6.1 kernel + busybox) under QEMU/TCG.

The guest comes from ``tests/guest/build-guest.sh`` (cached; ``GuestImage.build()`` runs it).
Its /init loads the virtio-net modules, configures eth0 from the kernel command line and
serves a command channel on the serial console (protocol in ``tests/guest/init``).

API
---
``GuestImage.build(outdir=None, timeout=BUILD_TIMEOUT) -> GuestImage``
    Build (or reuse) the kernel + initramfs. ``.kernel``, ``.initrd``, ``.root`` are paths;
    ``.host_busybox(applet, *args)`` and ``.host_iperf3(*args)`` give argv lists that run the
    guest's own static busybox / iperf3 (through the guest's ELF loader) on the host, so host
    tests need neither installed.

Netdevs (anything with ``qemu_args(netdev_id, mac) -> list[str]`` fits):
    ``TapNetdev(ifname, device_props={})``: QEMU's own tap backend (vhost=off, since this host
        has no /dev/vhost-net). The tap must exist in the guest's netns (or QEMU creates it).
    ``VhostUserNetdev(socket_path, server=False, reconnect=None, device_props={})``: a
        vhost-user backend. ``server=False``: QEMU connects to a listening backend (with
        ``reconnect=N`` it retries every N s); ``server=True``: QEMU listens (wait=off) and
        the backend connects. Either way QEMU 7.2 waits in its startup for the first
        connection (seen here in server mode: "QEMU waiting for connection"), so the guest
        boots only once the backend is there; with ``server=True`` start the backend after
        ``Guest()``. ``vectors=0`` is always set: QEMU 7.2 under TCG segfaults at device
        start with MSI-X on a vhost-user net device.
    ``device_props`` are virtio-net-pci properties, e.g. ``{"mrg_rxbuf": False, "csum": True,
    "guest_tso4": False, "host_mtu": 9000}`` (bools become on/off).

``Guest(image, netdev=None, *, ip=None, ip6=None, gw=None, gw6=None, mtu=None, mac=DEFAULT_MAC,
netns=None, mem_mb=GUEST_MEM_MB, log_path=None, append=(), qemu_args=(), qemu=None)``
    Starts QEMU at once (like Popen): TCG, one vCPU, memfd-shared guest RAM (vhost-user needs
    it), serial console on QEMU's stdin/stdout (logged to ``log_path``, default
    ``<image>/logs/guest-<pid>-<n>.log``, with QEMU's stderr). ``ip="198.18.0.2/24"``,
    ``ip6="fd00::2/64"`` etc. become ``vn.*`` kernel parameters; ``netns="NAME"`` runs QEMU
    through ``ip netns exec NAME`` (which execs, so the PID is QEMU's). QEMU gets SIGTERM if
    the thread that created the Guest dies (``pdeathsig_prefix``).
    ``wait_booted(timeout=BOOT_TIMEOUT)``: until the channel is up; raises GuestError if
        QEMU exits, GuestTimeout on timeout.
    ``run(cmd, timeout=RUN_TIMEOUT) -> (status, output)``: ``sh -c cmd`` in the guest,
        stdin /dev/null, stdout and stderr merged. Killed in the guest after ``timeout``
        seconds (then GuestTimeout); GuestTimeout too if the channel does not answer.
        Start background jobs with ``... >/tmp/log 2>&1 &``.
    ``check(cmd, timeout) -> output``: ``run`` that raises GuestCommandError on status != 0.
    ``virtio_features(ifname="eth0") -> int``: the negotiated virtio feature bits.
    ``close(grace=CLOSE_GRACE)``: SIGTERM QEMU, SIGKILL after the grace period, always
        reap; idempotent. ``with Guest(...) as g:`` closes on exit.

``GuestNetns(name)``: a network namespace for a guest's host side (created here; ``close()``
    deletes it) with ``run(argv)``, ``popen(argv)``, ``read_sysfs(path)`` and
    ``socket(family, type)`` (a socket created inside the namespace).
``remove_stale_netns(prefix)``: delete namespaces PREFIX<pid> left by runs that were killed.

Host side of guest traffic (shared by the e2e tests; failures raise AssertionError):
    ``skip_reason() -> str | None``: why guest tests cannot run here (no root, QEMU, tun).
    ``stop_process(proc, grace=PROC_GRACE)``: SIGTERM, SIGKILL after GRACE, reap.
    ``set_offloads(guest, "on"|"off")``: the guest's eth0 TX offloads (tx, sg, tso, gso,
        gro) and its GUEST_TSO* receive offloads (rx-gro-hw) all on or off, checked.
    ``link_counters(ns, ifname) -> dict``; ``mean_frame(before, after, "rx"|"tx")``: bytes
        per packet between two samples (a mean above MTU_FRAME means GSO frames passed).
    ``guest_to_host(guest, ns, host_addr, size)``: the guest's /tmp/tx through nc to a host
        socket; returns the SHA-256 the host received (exactly SIZE bytes).
    ``host_to_guest(guest, ns, guest_addr, payload)``: PAYLOAD from a host socket to nc -l in
        the guest; returns the SHA-256 of what the guest stored.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import itertools
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vmdnet.daemon import procs

log = logging.getLogger(__name__)

GUEST_DIR = Path(__file__).resolve().parent / "guest"
DEFAULT_OUTDIR = GUEST_DIR / "out"
# A first build downloads ~33 MB of .debs and unpacks the kernel (about 30 s here); a slow
# mirror or a busy CI machine gets a wide margin.
BUILD_TIMEOUT = 900.0
# TCG boots the 6.1 kernel to the channel in 3-5 s on an idle core; 2 shared cores under
# load are several times slower.
BOOT_TIMEOUT = 90.0
RUN_TIMEOUT = 30.0
# Extra host-side wait beyond a command's guest-side timeout: the guest's `timeout` polls
# once a second and then prints the output.
RUN_SLACK = 10.0
# SIGTERM lets QEMU exit cleanly; past this, SIGKILL.
CLOSE_GRACE = 5.0
KILL_WAIT = 5.0
# After the console closed, QEMU is exiting: how long to wait for its status.
EXIT_WAIT = 1.0
READER_JOIN = 5.0
# The guest reads one command per line in canonical tty mode (4095 bytes per line at most);
# base64 grows a command by 4/3, plus the header.
MAX_CMD_BYTES = 2048
# Console lines quoted in exceptions.
LOG_TAIL_LINES = 40
GUEST_MEM_MB = 512
DEFAULT_MAC = "52:54:00:12:34:56"
# The guest command's exit status when the guest-side `timeout -s KILL` fired.
STATUS_KILLED = 128 + 9

READY_MARK = b"@@VN-READY@@\n"
CLONE_NEWNET = 0x40000000


class GuestError(RuntimeError):
    """QEMU or the guest failed; the message ends with the tail of the console log."""


class GuestTimeout(GuestError):
    """The guest did not answer in time."""


class GuestCommandError(GuestError):
    """A guest command exited non-zero (from Guest.check)."""

    def __init__(self, cmd: str, status: int, output: str) -> None:
        super().__init__(f"guest command {cmd!r} exited {status}:\n{output}")
        self.status = status
        self.output = output


# --- the image ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestImage:
    """The built guest: kernel, initramfs and the unpacked initramfs tree."""

    outdir: Path

    @property
    def kernel(self) -> Path:
        return self.outdir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.outdir / "initramfs.cpio.gz"

    @property
    def root(self) -> Path:
        return self.outdir / "root"

    @classmethod
    def build(cls, outdir: Path | None = None, timeout: float = BUILD_TIMEOUT) -> GuestImage:
        """Run build-guest.sh (a no-op when its outputs are current) and return the image."""
        outdir = Path(outdir) if outdir is not None else DEFAULT_OUTDIR
        proc = subprocess.run(
            [str(GUEST_DIR / "build-guest.sh"), str(outdir)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            raise GuestError(f"build-guest.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        log.debug("build-guest.sh: %s", proc.stderr.strip())
        return cls(outdir.resolve())

    def host_busybox(self, applet: str, *args: str) -> list[str]:
        """argv running the guest's static busybox APPLET on the host."""
        return [str(self.root / "bin" / "busybox"), applet, *args]

    def host_iperf3(self, *args: str) -> list[str]:
        """argv running the guest's iperf3 on the host through the guest's own loader."""
        return [
            str(self.root / "lib64" / "ld-linux-x86-64.so.2"),
            "--library-path", str(self.root / "lib" / "x86_64-linux-gnu"),
            str(self.root / "usr" / "bin" / "iperf3"), *args,
        ]


# --- netdevs --------------------------------------------------------------------------------

PropValue = str | int | bool


class Netdev(Protocol):
    """What Guest needs from a network backend: the QEMU arguments for one NIC."""

    def qemu_args(self, netdev_id: str, mac: str) -> list[str]: ...


def qemu_escape(value: str) -> str:
    """Escape a value inside a QEMU option list (a comma is written twice)."""
    return value.replace(",", ",,")


def device_props(props: Mapping[str, PropValue]) -> str:
    """',k=v' for each property; bools as on/off."""
    parts = []
    for key, value in props.items():
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f",{key}={qemu_escape(str(value))}")
    return "".join(parts)


@dataclass(frozen=True)
class TapNetdev:
    """QEMU's own tap backend on an existing (or QEMU-created) tap IFNAME."""

    ifname: str
    device_props: Mapping[str, PropValue] = field(default_factory=dict)

    def qemu_args(self, netdev_id: str, mac: str) -> list[str]:
        netdev = (f"tap,id={netdev_id},ifname={qemu_escape(self.ifname)},"
                  "script=no,downscript=no,vhost=off")
        device = f"virtio-net-pci,netdev={netdev_id},mac={mac}{device_props(self.device_props)}"
        return ["-netdev", netdev, "-device", device]


@dataclass(frozen=True)
class VhostUserNetdev:
    """A vhost-user backend at SOCKET_PATH (QEMU as client unless server=True)."""

    socket_path: str
    server: bool = False
    reconnect: int | None = None
    device_props: Mapping[str, PropValue] = field(default_factory=dict)

    def qemu_args(self, netdev_id: str, mac: str) -> list[str]:
        if str(self.device_props.get("vectors", "0")) != "0":
            raise ValueError("vhost-user under TCG needs vectors=0 (QEMU 7.2 segfaults)")
        if self.server and self.reconnect is not None:
            raise ValueError("reconnect applies to QEMU as a client only")
        chardev = f"socket,id=c{netdev_id},path={qemu_escape(self.socket_path)}"
        if self.server:
            chardev += ",server=on,wait=off"
        elif self.reconnect is not None:
            chardev += f",reconnect={self.reconnect}"
        props = {k: v for k, v in self.device_props.items() if k != "vectors"}
        device = (f"virtio-net-pci,netdev={netdev_id},mac={mac},vectors=0"
                  f"{device_props(props)}")
        return ["-chardev", chardev,
                "-netdev", f"vhost-user,id={netdev_id},chardev=c{netdev_id}",
                "-device", device]


# --- the guest ------------------------------------------------------------------------------

_log_serial = itertools.count()


class Guest:
    """One QEMU/TCG guest with its serial command channel. Starts QEMU in the constructor."""

    def __init__(
        self,
        image: GuestImage,
        netdev: Netdev | None = None,
        *,
        ip: str | None = None,
        ip6: str | None = None,
        gw: str | None = None,
        gw6: str | None = None,
        mtu: int | None = None,
        mac: str = DEFAULT_MAC,
        netns: str | None = None,
        mem_mb: int = GUEST_MEM_MB,
        log_path: Path | None = None,
        append: Sequence[str] = (),
        qemu_args: Sequence[str] = (),
        qemu: str | None = None,
    ) -> None:
        self.image = image
        self.log_path = Path(log_path) if log_path else (
            image.outdir / "logs" / f"guest-{os.getpid()}-{next(_log_serial)}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._booted = False
        self._broken: str | None = None
        self._ids = itertools.count(1)
        self._run_lock = threading.Lock()
        kparams = {"vn.ip": ip, "vn.ip6": ip6, "vn.gw": gw, "vn.gw6": gw6, "vn.mtu": mtu}
        cmdline = ["console=ttyS0", "panic=-1", *(f"{k}={v}" for k, v in kparams.items()
                                                   if v is not None), *append]
        argv = self._argv(qemu, mem_mb, " ".join(cmdline), netdev, mac, qemu_args)
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        argv = [*pdeathsig_prefix(), *argv]
        self._log = open(self.log_path, "wb", buffering=0)  # closed in close()
        self._log.write(f"### {' '.join(argv)}\n".encode())
        log.info("starting guest, console log %s", self.log_path)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise
        self._reader = threading.Thread(target=self._read_console, daemon=True,
                                        name=f"guest-console-{self.proc.pid}")
        self._reader.start()

    def _argv(self, qemu: str | None, mem_mb: int, cmdline: str, netdev: Netdev | None,
              mac: str, extra: Sequence[str]) -> list[str]:
        nic = netdev.qemu_args("n0", mac) if netdev is not None else ["-nic", "none"]
        return [
            qemu or os.environ.get("VN_QEMU", "qemu-system-x86_64"),
            "-accel", "tcg", "-m", str(mem_mb), "-smp", "1",
            "-nographic", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", cmdline,
            # Shared guest RAM, so a vhost-user backend can map it.
            "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on",
            "-numa", "node,memdev=mem",
            # The console on QEMU's stdio: no monitor, no Ctrl-C handling.
            "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
            "-monitor", "none",
            *nic, *extra,
        ]

    # The reader thread: console bytes -> buffer + log.
    def _read_console(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if chunk:
                try:
                    self._log.write(chunk)
                except (OSError, ValueError):
                    pass  # the log is closed: keep draining so QEMU never blocks
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._buf += chunk
                self._cond.notify_all()

    def _wait_for(self, pattern: re.Pattern[bytes], timeout: float,
                  what: str) -> tuple[bytes, ...]:
        """Wait until PATTERN matches the unread console bytes; consume through the match and
        return its groups."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = pattern.search(self._buf)
                if m is not None:
                    groups = tuple(bytes(g) for g in m.groups())
                    del self._buf[: m.end()]
                    return groups
                if self._eof:
                    raise GuestError(f"QEMU closed the console (exit status "
                                     f"{self._exit_status()}) while waiting for {what}"
                                     f"{self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestTimeout(f"no {what} within {timeout:.0f} s{self.log_tail()}")
                self._cond.wait(left)

    def _exit_status(self) -> int | None:
        """QEMU's exit status once the console closed (None if it is still running)."""
        try:
            return self.proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the console log, for error messages."""
        try:
            text = self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- {self.log_path} (last {lines} lines) ---\n{tail}"

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until /init announces the command channel."""
        if self._booted:
            return
        self._wait_for(re.compile(re.escape(READY_MARK)), timeout, "boot")
        self._booted = True

    def run(self, cmd: str, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
        """Run CMD with sh -c in the guest; return (exit status, stdout+stderr).

        One command at a time: calls from several threads take turns."""
        with self._run_lock:
            return self._run(cmd, timeout)

    def _run(self, cmd: str, timeout: float) -> tuple[int, str]:
        if self._broken:
            raise GuestError(f"channel unusable: {self._broken}")
        self.wait_booted()
        raw = cmd.encode()
        if len(raw) > MAX_CMD_BYTES:
            raise ValueError(f"guest command longer than {MAX_CMD_BYTES} bytes")
        cmd_id = next(self._ids)
        guest_timeout = max(1, math.ceil(timeout))
        line = f"@@VN-RUN {cmd_id} {guest_timeout} {base64.b64encode(raw).decode()}\n"
        started = time.monotonic()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise GuestError(f"QEMU console closed: {e}{self.log_tail()}") from e
        pattern = re.compile(rb"@@VN-BEGIN %d@@\n(.*?)\n@@VN-END %d (\d+)@@\n" % (cmd_id, cmd_id),
                             re.DOTALL)
        try:
            out, rc = self._wait_for(pattern, guest_timeout + RUN_SLACK, f"answer to {cmd!r}")
        except GuestTimeout:
            self._broken = f"no answer to {cmd!r}"
            raise
        status, output = int(rc), out.decode(errors="replace")
        if status == STATUS_KILLED and time.monotonic() - started >= guest_timeout:
            raise GuestTimeout(f"guest command {cmd!r} killed after {guest_timeout} s:\n{output}")
        return status, output

    def check(self, cmd: str, timeout: float = RUN_TIMEOUT) -> str:
        """Run CMD; return its output, raise GuestCommandError if it exits non-zero."""
        status, output = self.run(cmd, timeout)
        if status != 0:
            raise GuestCommandError(cmd, status, output)
        return output

    def virtio_features(self, ifname: str = "eth0") -> int:
        """The virtio features the guest driver negotiated (sysfs: one char per bit)."""
        bits = self.check(f"cat /sys/class/net/{ifname}/device/features").strip()
        if not re.fullmatch(r"[01]+", bits):
            raise GuestError(f"unexpected features string {bits!r}")
        return sum(1 << i for i, c in enumerate(bits) if c == "1")

    def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop QEMU (SIGTERM, then SIGKILL after GRACE seconds) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("QEMU %d ignored SIGTERM, killing it", self.proc.pid)
                self.proc.kill()
                self.proc.wait(KILL_WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self._reader.join(READER_JOIN)
        if not self._log.closed:
            self._log.write(f"\n### QEMU exit status {self.proc.returncode}\n".encode())
            self._log.close()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- network namespaces ---------------------------------------------------------------------

NETNS_RUN = Path("/run/netns")
IP_TIMEOUT = 30.0


class GuestNetns:
    """A network namespace created here and deleted by close()."""

    def __init__(self, name: str) -> None:
        if not name.startswith("vn"):
            raise ValueError("vmdnet test namespaces start with 'vn'")
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=IP_TIMEOUT)

    def run(self, argv: Sequence[str], timeout: float = IP_TIMEOUT,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside the namespace; capture its output as text."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ARGV inside the namespace (ip netns exec execs: the PID is ARGV's)."""
        return subprocess.Popen([*pdeathsig_prefix(), "ip", "netns", "exec", self.name, *argv],
                                **kwargs)

    def read_sysfs(self, path: str) -> str:
        """Read a /sys file as seen from inside the namespace (e.g. a tap's statistics)."""
        return self.run(["cat", path]).stdout.strip()

    def socket(self, family: int, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket created inside the namespace (setns on a short-lived thread)."""
        result: list[socket.socket | BaseException] = []

        def enter_and_create() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(NETNS_RUN / self.name, "rb") as f:
                    if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                result.append(socket.socket(family, type))
            except BaseException as e:  # handed to the caller's thread
                result.append(e)

        t = threading.Thread(target=enter_and_create, name=f"netns-{self.name}")
        t.start()
        t.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=IP_TIMEOUT,
                       capture_output=True)

    def __enter__(self) -> GuestNetns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale_netns(prefix: str) -> list[str]:
    """Delete namespaces named PREFIX<pid> whose pid no longer runs; return their names.

    A test run killed outright cannot delete its namespace; the next run of the same test
    sweeps it. A pid that has been reused keeps its namespace (conservative).
    """
    if not prefix.startswith("vn"):
        raise ValueError("vmdnet test namespaces start with 'vn'")
    removed = []
    try:
        names = sorted(os.listdir(NETNS_RUN))
    except FileNotFoundError:
        return removed
    for name in names:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)", name)
        if m is None or Path(f"/proc/{m.group(1)}").exists():
            continue
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=IP_TIMEOUT,
                       capture_output=True)
        log.info("removed stale namespace %s", name)
        removed.append(name)
    return removed


def pdeathsig_prefix() -> list[str]:
    """argv prefix that has the kernel SIGTERM the child when its parent thread dies.

    A test run killed outright (CI timeout, SIGKILL) then leaves no QEMU or server behind.
    setpriv(1) sets it and execs, and the setting survives the exec chain (ip netns exec,
    QEMU). The parent is the *thread* that started the child: start guests from a thread
    that outlives them (pytest fixtures run on the main thread).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


def have_qemu() -> bool:
    """Whether the QEMU binary Guest would start exists."""
    return shutil.which(os.environ.get("VN_QEMU", "qemu-system-x86_64")) is not None


# --- host side of guest traffic -------------------------------------------------------------

# Bounds for one transfer under TCG on a busy 2-core machine (~1 Gbit/s at best, often far
# less); they only stop a broken setup from hanging.
XFER_TIMEOUT = 120.0
# A guest's nc -l starts in the background: connect attempts until it listens.
CONNECT_TRIES = 100
CONNECT_PAUSE = 0.1
CONNECT_TIMEOUT = 10.0
PROC_GRACE = 5.0
# The largest frame of a 1500-byte MTU Ethernet link; a larger one on a tap is a GSO
# super-packet.
MTU_FRAME = 1514
RECV_CHUNK = 1 << 20
_ports = itertools.count(5100)

# ethtool -K arguments per mode; rx-gro-hw is virtio_net's switch for the GUEST_TSO*
# offloads (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, which QEMU turns into TUNSETOFFLOAD).
GUEST_OFFLOADS = {
    "on": "tx on sg on tso on gso on gro on rx-gro-hw on",
    "off": "tx off sg off tso off gso off gro off rx-gro-hw off",
}
# What `ethtool -k` must then say.
OFFLOAD_STATE = ("tx-checksumming", "tcp-segmentation-offload",
                 "generic-segmentation-offload", "rx-gro-hw")


def skip_reason() -> str | None:
    """Why guest tests cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    if not have_qemu():
        return "qemu-system-x86_64 is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def stop_process(proc: subprocess.Popen[bytes], grace: float = PROC_GRACE) -> None:
    """Terminate a process we started, kill it after GRACE seconds, reap it."""
    procs.stop_process(proc, grace)


def set_offloads(guest: Guest, mode: str, ifname: str = "eth0") -> None:
    """Turn the guest's offloads all on or all off and check that ethtool agrees."""
    guest.check(f"ethtool -K {ifname} {GUEST_OFFLOADS[mode]}")
    state = guest.check(f"ethtool -k {ifname}")
    for name in OFFLOAD_STATE:
        if f"{name}: {mode}" not in state:
            raise AssertionError(f"{name} is not {mode}:\n{state}")


def link_counters(ns: GuestNetns, ifname: str) -> dict[str, int]:
    """A link's byte and packet counters. On a tap, rx is what its reader (QEMU, vionet)
    wrote, i.e. guest TX; tx is what the reader took, i.e. guest RX."""
    stats = f"/sys/class/net/{ifname}/statistics"
    return {name: int(ns.read_sysfs(f"{stats}/{name}"))
            for name in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")}


def mean_frame(before: dict[str, int], after: dict[str, int], way: str) -> float:
    """Mean bytes per packet in direction WAY ("rx" or "tx") between two samples."""
    packets = after[f"{way}_packets"] - before[f"{way}_packets"]
    if packets <= 0:
        raise AssertionError(f"no {way} packets between the samples")
    return (after[f"{way}_bytes"] - before[f"{way}_bytes"]) / packets


def addr_family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _receive_exactly(lsock: socket.socket, size: int, got: dict[str, object]) -> None:
    """Accept one connection, hash SIZE bytes of it (fewer if it ends early) into GOT."""
    try:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(XFER_TIMEOUT)
            digest, count = hashlib.sha256(), 0
            while count < size:
                chunk = conn.recv(min(RECV_CHUNK, size - count))
                if not chunk:
                    break
                digest.update(chunk)
                count += len(chunk)
            got.update(count=count, sha=digest.hexdigest())
    except OSError as e:
        got["error"] = e


def tcp_out_segs(guest: Guest) -> int:
    """The guest's TCP OutSegs (IPv4 and IPv6 share the MIB): segments it sent."""
    lines = [ln.split() for ln in guest.check("grep '^Tcp:' /proc/net/snmp").splitlines()]
    names, values = lines[0], lines[1]
    return int(values[names.index("OutSegs")])


def guest_to_host(guest: Guest, ns: GuestNetns, host_addr: str, size: int,
                  src: str = "/tmp/tx") -> str:
    """Send the guest's file SRC (SIZE bytes) with nc to a host socket; return the SHA-256
    the host received. The host closes after SIZE bytes, which ends the guest's nc."""
    port = next(_ports)
    lsock = ns.socket(addr_family(host_addr))
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host_addr, port))
    lsock.listen(1)
    lsock.settimeout(XFER_TIMEOUT)
    got: dict[str, object] = {}
    receiver = threading.Thread(target=_receive_exactly, args=(lsock, size, got),
                                name="guest_to_host")
    receiver.start()
    try:
        status, out = guest.run(f"nc {host_addr} {port} < {src}", timeout=XFER_TIMEOUT)
    finally:
        try:
            lsock.shutdown(socket.SHUT_RDWR)  # wakes a still-blocked accept()
        except OSError:
            pass
        receiver.join(XFER_TIMEOUT)
        lsock.close()
    if "error" in got or got.get("count") != size:
        raise AssertionError(f"guest->host {host_addr}: {got}, nc exit {status}: {out}")
    return str(got["sha"])


def connect_retry(ns: GuestNetns, addr: str, port: int) -> socket.socket:
    """Connect from the namespace to the guest, retrying while its listener starts."""
    for _ in range(CONNECT_TRIES):
        sock = ns.socket(addr_family(addr))
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((addr, port))
            return sock
        except ConnectionRefusedError:
            sock.close()
            time.sleep(CONNECT_PAUSE)
    raise AssertionError(f"guest never listened on {addr} port {port}")


def host_to_guest(guest: Guest, ns: GuestNetns, guest_addr: str, payload: bytes) -> str:
    """Send PAYLOAD from a host socket to nc -l in the guest; return the SHA-256 of what the
    guest stored in /tmp/rx."""
    port = next(_ports)
    guest.check(f"rm -f /tmp/rx; nc -l -p {port} > /tmp/rx 2>/tmp/nc.err & echo $! > /tmp/nc.pid")
    with connect_retry(ns, guest_addr, port) as sock:
        sock.settimeout(XFER_TIMEOUT)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        # nc exits at our EOF and closes: then /tmp/rx is complete.
        if sock.recv(1) != b"":
            raise AssertionError("the guest's nc sent data back")
    out = guest.check("pid=$(cat /tmp/nc.pid); while [ -d /proc/$pid ]; do sleep 0.1; done; "
                      "wc -c < /tmp/rx; sha256sum /tmp/rx", timeout=XFER_TIMEOUT)
    count, sha = out.split()[:2]
    if int(count) != len(payload):
        raise AssertionError(f"host->guest {guest_addr}: guest got {count} of {len(payload)} B")
    return sha
