"""vmdnetd end to end: the daemon on a config with one switch and two QEMU guests.

The daemon runs in the namespace vn-daemon-<pid> (guests 198.18.2.2 and .3/24 on
the switch vnbr0), creates the bridge and taps, launches both VMMs and one
sandboxed vionet per interface. Checked: vmdnetctl status shows both VMs and
their vionets; the guests ping each other (commands go over each VM's console
socket, the protocol of tests/guest/init) and move 8 MiB of TCP each way with
the payload's SHA-256 checked on both ends; every vionet runs with uid != 0,
NoNewPrivs 1, Seccomp 2 in the empty chroot; show interfaces aggregates the
vionets' counters; a non-root user may read but not reload; a killed vionet is
restarted (QEMU reconnects and the new vionet serves it) and traffic resumes;
reload with a broken file is refused with file:line and nothing running
changes; stop and start of a VM.

Everything this module starts is stopped by PID (the daemon stops its children on
SIGTERM; any child still alive afterwards is killed by the PID status reported),
and the namespace is deleted, even when a test fails.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guestlib import GuestImage, GuestNetns, have_qemu, remove_stale_netns

from vmdnet.cli.main import ask
from vmdnet.privsep import sandbox
from vmdnet.privsep.control import ControlError, Request

pytestmark = [pytest.mark.root, pytest.mark.slow]

NS_PREFIX = "vn-daemon-"
BRIDGE = "vnbr0"
TAPS = ("vndt0", "vndt1", "vndt2")
SWITCH_GROUP = "vmlan"
GUEST_A, GUEST_B = "198.18.2.2", "198.18.2.3"
# beta's local interface: vmdnetd gives the host end the first /31 of the prefix.
LOCAL_PREFIX = "198.18.4.0/24"
LOCAL_HOST, LOCAL_GUEST = "198.18.4.0", "198.18.4.1"
# The daemon makes its control socket at once; guests boot in 3-5 s under TCG on an idle
# core, far slower on 2 shared cores: generous bounds, never part of an assertion.
DAEMON_START_S = 30.0
BOOT_S = 180.0
RESTART_S = 60.0
COMMAND_S = 30
DAEMON_STOP_S = 60.0
POLL_S = 0.2
# vmdnetctl answers at once; show interfaces asks each vionet (2 s each at most).
CTL_TIMEOUT_S = 120
# Console answers: re-send the command this often until the guest's channel is up.
RESEND_S = 5.0
# TCP between the guests: a bounded payload, its SHA-256 compared on both ends.
TCP_BYTES = 8 * 1024 * 1024
# 8 MiB take a second or two under TCG; a loaded machine gets a generous bound.
TRANSFER_S = 120
# The receiving nc's stdin is held open this long: busybox nc half-closes the
# connection when its stdin ends, and the sender then stops early.
NC_HOLD_S = TRANSFER_S
# Connection attempts while the receiver's nc is not listening yet, a second apart.
CONNECT_TRIES = 10
SHA256_RE = re.compile(r"\b[0-9a-f]{64}\b")


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, taps, setresuid)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if not have_qemu():
        return "no qemu-system-x86_64"
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/libseccomp.so.2"):
        return "no libseccomp.so.2"
    return None


def config_text(image: GuestImage, *, broken: bool = False, alpha_memory: str = "256M") -> str:
    """Two VMs on switch "lan"; beta, owned by the unprivileged user, also has a local
    interface (host end 198.18.4.0/31)."""
    return f"""# vmdnetd e2e test ({__name__})
vmm "/usr/bin/qemu-system-x86_64" "-accel" "tcg"
socket owner "root:{sandbox.DEFAULT_USER}"
local prefix {LOCAL_PREFIX}
switch "lan" {{
	interface "{BRIDGE}"
	group "{SWITCH_GROUP}"
}}

vm "alpha" {{
	memory {alpha_memory}
	boot "{image.kernel}"
	initrd "{image.initrd}"
	cmdline "console=ttyS0 panic=-1 vn.ip={GUEST_A}/24"
	interface "{TAPS[0]}" {{
		switch "lan"
		lladdr fe:e1:ba:d0:00:01
		offload {{ csum tso }}
	}}
}}

vm "beta" {{
	memory 256M
	boot "{image.kernel}"
	initrd "{image.initrd}"
	cmdline "console=ttyS0 panic=-1 vn.ip={GUEST_B}/24"
	owner "{sandbox.DEFAULT_USER}"
	interface "{TAPS[1]}" {{
		switch "lan"
		lladdr fe:e1:ba:d0:00:02
		no offload
	}}
	local interface "{TAPS[2]}"
}}
""" + ('vm "gamma" {\n\tmemory 1\n}\n' if broken else "")


class Console:
    """The guest's command channel over the VM's console socket."""

    _ids = itertools.count(1)

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, cmd: str, timeout: int = COMMAND_S, wait: float = BOOT_S) -> tuple[int, str]:
        cid = next(self._ids) + 1000 * os.getpid() % 100000
        line = f"@@VN-RUN {cid} {timeout} {base64.b64encode(cmd.encode()).decode()}\n"
        pattern = re.compile(rb"@@VN-BEGIN %d@@\n(.*?)\n@@VN-END %d (\d+)@@" % (cid, cid),
                             re.DOTALL)
        deadline = time.monotonic() + wait
        buf = b""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.path)
            s.settimeout(1.0)
            sent = 0.0
            while time.monotonic() < deadline:
                if time.monotonic() - sent > RESEND_S and not buf.count(b"@@VN-BEGIN %d" % cid):
                    s.sendall(line.encode())   # the first copies may be eaten while booting
                    sent = time.monotonic()
                try:
                    buf += s.recv(65536)
                except TimeoutError:
                    continue
                m = pattern.search(buf)
                if m:
                    return int(m.group(2)), m.group(1).decode(errors="replace")
        raise AssertionError(f"no answer to {cmd!r} on {self.path} within {wait} s")


class Daemon:
    """vmdnetd started in the namespace; stopped by PID."""

    def __init__(self, ns: GuestNetns, workdir: Path, conf: Path) -> None:
        self.workdir = workdir
        self.conf = conf
        self.rundir = workdir / "run"
        self.ctl = str(workdir / "ctl.sock")
        self.log_path = workdir / "vmdnetd.log"
        self.seen_pids: set[int] = set()
        with open(self.log_path, "wb") as logf:
            self.proc = ns.popen([sys.executable, "-m", "vmdnet.daemon", "-d", "-f", str(conf),
                                  "-r", str(self.rundir), "-s", self.ctl],
                                 stdin=subprocess.DEVNULL, stdout=logf,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DAEMON_START_S
        while not os.path.exists(self.ctl):
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "no control socket\n" + self.log()
            time.sleep(POLL_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl_run(self, *words: str) -> subprocess.CompletedProcess[str]:
        """vmdnetctl as a separate process."""
        return subprocess.run([sys.executable, "-m", "vmdnet.cli", "-s", self.ctl, *words],
                              capture_output=True, text=True, timeout=CTL_TIMEOUT_S)

    def ctl_json(self, *words: str) -> object:
        res = self.ctl_run("-o", "json", *words)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def status(self) -> dict[str, dict]:
        vms = {vm["name"]: vm for vm in self.ctl_json("status")}
        for vm in vms.values():
            self.seen_pids |= {p for p in [vm["pid"]] + [i["vionet_pid"]
                                                         for i in vm["interfaces"]] if p}
        return vms

    def vionet_pids(self) -> dict[str, int | None]:
        return {name: vm["interfaces"][0]["vionet_pid"] for name, vm in self.status().items()}

    def wait_vionets(self, not_pids: set[int] = frozenset()) -> dict[str, int]:
        deadline = time.monotonic() + RESTART_S
        while time.monotonic() < deadline:
            pids = self.vionet_pids()
            if all(p is not None and p not in not_pids for p in pids.values()):
                return pids  # type: ignore[return-value]
            time.sleep(POLL_S)
        raise AssertionError(f"vionets not (re)started: {pids}\n{self.log()}")

    def console(self, vm: str) -> Console:
        return Console(str(self.rundir / vm / "console.sock"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DAEMON_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.seen_pids:    # children the daemon failed to stop
            kill_if_ours(pid)


def kill_if_ours(pid: int) -> None:
    """SIGKILL PID if it is still one of our QEMUs or vionets (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"qemu-system" in cmdline or b"vmdnet.vionet.main" in cmdline:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return GuestImage.build()


@pytest.fixture(scope="module")
def ns(image: GuestImage) -> Iterator[GuestNetns]:
    remove_stale_netns(NS_PREFIX)
    netns = GuestNetns(f"{NS_PREFIX}{os.getpid()}")
    try:
        netns.run(["ip", "link", "set", "lo", "up"])
        yield netns
    finally:
        netns.close()


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not under pytest's 0700 tmp root: a non-root user must reach the control socket.
    d = Path(tempfile.mkdtemp(prefix="vn-daemon-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(image: GuestImage, ns: GuestNetns, workdir: Path) -> Iterator[Daemon]:
    # The config names the unprivileged user (socket group, beta's owner): it must exist
    # before the file is parsed. vmdnetd would create it too, but only after parsing.
    sandbox.ensure_user(sandbox.DEFAULT_USER)
    conf = workdir / "vmdnet.conf"
    conf.write_text(config_text(image))
    d = Daemon(ns, workdir, conf)
    try:
        d.wait_vionets()
        yield d
    finally:
        d.close()


def ping(d: Daemon, vm: str, addr: str) -> str:
    rc, out = d.console(vm).run(f"ping -c 3 -i 0.3 -W 5 {addr}")
    assert rc == 0 and " 0% packet loss" in out, out
    return out


def tcp_transfer(d: Daemon, src: str, dst: str, dst_addr: str, port: int) -> str:
    """TCP_BYTES of random data from guest SRC to guest DST with busybox nc; the
    SHA-256 the receiver computes must be the sender's. Returns it."""
    rc, out = d.console(dst).run(
        f"rm -f /tmp/rx.part /tmp/rx.sum; (sleep {NC_HOLD_S} | nc -l -p {port} | "
        f"(sha256sum > /tmp/rx.part && mv /tmp/rx.part /tmp/rx.sum)) "
        f"</dev/null >/dev/null 2>&1 & echo listening")
    assert rc == 0 and "listening" in out, out
    rc, out = d.console(src).run(
        f"head -c {TCP_BYTES} /dev/urandom > /tmp/tx && sha256sum < /tmp/tx && ok=0 && "
        f"for i in $(seq {CONNECT_TRIES}); do "
        f"if nc {dst_addr} {port} < /tmp/tx; then ok=1; break; fi; sleep 1; done; "
        f"rm -f /tmp/tx; [ $ok = 1 ]", timeout=TRANSFER_S)
    sent = SHA256_RE.findall(out)
    assert rc == 0 and len(sent) == 1, out
    rc, out = d.console(dst).run(
        f"i=0; while [ ! -e /tmp/rx.sum ] && [ $i -lt {TRANSFER_S} ]; do sleep 1; "
        f"i=$((i+1)); done; cat /tmp/rx.sum", timeout=TRANSFER_S + COMMAND_S)
    got = SHA256_RE.findall(out)
    assert rc == 0 and got == sent, f"sent {sent}, {dst} received: {out}"
    return sent[0]


def test_status_shows_both_vms(daemon: Daemon) -> None:
    vms = daemon.status()
    assert set(vms) == {"alpha", "beta"}
    user = sandbox.lookup_user(sandbox.DEFAULT_USER)
    assert user is not None
    for vm, uid in (("alpha", 0), ("beta", user.uid)):
        pid = vms[vm]["pid"]
        assert vms[vm]["state"] == "running" and pid
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/bin/qemu")
        # The VMM runs as the VM's owner.
        assert proc_status(pid)["Uid"].split() == [str(uid)] * 4
    assert vms["beta"]["owner"] == sandbox.DEFAULT_USER
    table = daemon.ctl_run("status")
    assert table.returncode == 0
    assert re.search(r"alpha\s+vndt0\(\d+\)", table.stdout), table.stdout


def test_guests_ping_each_other(daemon: Daemon) -> None:
    ping(daemon, "alpha", GUEST_B)
    ping(daemon, "beta", GUEST_A)
    # Everything the console printed is also in its log file.
    for vm, mac in (("alpha", "fe:e1:ba:d0:00:01"), ("beta", "fe:e1:ba:d0:00:02")):
        text = (daemon.rundir / vm / "console.log").read_text(errors="replace")
        assert f"vn: eth0 up: {mac}" in text and "0% packet loss" in text


def test_guests_move_tcp_data(daemon: Daemon) -> None:
    """alpha (csum, tso to its tap) and beta (no offload): both directions, each
    payload's hash checked end to end (a corrupted or lost byte changes it)."""
    a_to_b = tcp_transfer(daemon, "alpha", "beta", GUEST_B, 5001)
    b_to_a = tcp_transfer(daemon, "beta", "alpha", GUEST_A, 5002)
    assert a_to_b != b_to_a      # two different random payloads
    ifaces = {i["tap"]: i for i in daemon.ctl_json("show", "interfaces")}
    for tap in TAPS[:2]:
        st = ifaces[tap]["stats"]
        assert st["tx"]["bytes"] > TCP_BYTES and st["rx"]["bytes"] > TCP_BYTES, st


def test_switch_and_local_interface_on_the_host(daemon: Daemon, ns: GuestNetns) -> None:
    link = ns.run(["ip", "-d", "link", "show", BRIDGE]).stdout
    assert f"alias vmdnet group {SWITCH_GROUP}" in link, link
    for tap in TAPS[:2]:
        assert f"master {BRIDGE}" in ns.run(["ip", "link", "show", tap]).stdout
    addr = ns.run(["ip", "-4", "-o", "addr", "show", TAPS[2]]).stdout
    assert f"inet {LOCAL_HOST}/31" in addr, addr
    # The guest end, configured by hand here (vionet also leases it over DHCP:
    # tests/e2e/test_daemon_lladdr_dhcp.py).
    rc, out = daemon.console("beta").run(
        f"ip addr add {LOCAL_GUEST}/31 dev eth1 && ip link set eth1 up && "
        f"ping -c 3 -i 0.3 -W 5 {LOCAL_HOST}")
    assert rc == 0 and " 0% packet loss" in out, out


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def test_vionets_are_sandboxed(daemon: Daemon) -> None:
    user = sandbox.lookup_user(sandbox.DEFAULT_USER)
    assert user is not None
    for pid in daemon.wait_vionets().values():
        st = proc_status(pid)
        assert st["Uid"].split() == [str(user.uid)] * 4 and user.uid != 0
        assert st["Gid"].split() == [str(user.gid)] * 4
        assert st["NoNewPrivs"] == "1"
        assert st["Seccomp"] == "2"
        assert os.readlink(f"/proc/{pid}/root") == sandbox.DEFAULT_CHROOT
        # Files: stdin (/dev/null), the log (stdout, stderr), the tap and guest memory
        # (memfd). The rest are sockets, the epoll fd and eventfds it made itself.
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        files = [t for t in targets if t.startswith("/") and not t.startswith("/memfd:")]
        assert files.count("/dev/net/tun") == 1, targets
        assert {t for t in files if t != "/dev/net/tun"} <= {
            "/dev/null", *(str(p) for p in daemon.rundir.glob("*/vionet*.log"))}, targets


def test_show_interfaces_aggregates_counters(daemon: Daemon) -> None:
    ping(daemon, "alpha", GUEST_B)
    ifaces = {i["tap"]: i for i in daemon.ctl_json("show", "interfaces")}
    assert set(ifaces) == set(TAPS)
    assert ifaces[TAPS[2]]["local"] == f"{LOCAL_HOST}/31"
    for i in (ifaces[t] for t in TAPS[:2]):
        st = i["stats"]
        assert st is not None and st["tx"]["packets"] > 0 and st["rx"]["packets"] > 0
        assert "VIRTIO_F_VERSION_1" in st["negotiated_features"]
    # "no offload" on beta: the tap gets no offloads whatever the guest asks.
    assert ifaces[TAPS[1]]["stats"]["tap"]["tun_offload_flags"] == 0
    assert ifaces[TAPS[0]]["stats"]["tap"]["tun_offload_flags"] != 0
    table = daemon.ctl_run("show", "interfaces", "alpha")
    assert table.returncode == 0 and TAPS[0] in table.stdout and TAPS[1] not in table.stdout


def ask_as(uid: int, gid: int, path: str, req: Request) -> str:
    """Send REQ from a forked child running as uid/gid (SO_PEERCRED sees those).

    Forked rather than exec'd: this interpreter lives under /root, which the
    unprivileged user cannot enter. Returns "ok" or the daemon's error message.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                ask(path, req)
                os.write(w, b"ok")
            except ControlError as exc:
                os.write(w, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return answer


def test_non_root_may_read_but_not_change(daemon: Daemon) -> None:
    user = sandbox.lookup_user(sandbox.DEFAULT_USER)
    assert user is not None
    # The socket is root:_vmdnet 0660 ("socket owner" in the config).
    assert ask_as(user.uid, user.gid, daemon.ctl, Request("status")) == "ok"
    for req in (Request("reload"), Request("stop", "alpha"), Request("log", arg="verbose")):
        assert "permission denied" in ask_as(user.uid, user.gid, daemon.ctl, req)
    assert daemon.status()["alpha"]["state"] == "running"


def test_killed_vionet_is_restarted(daemon: Daemon) -> None:
    before = daemon.wait_vionets()
    starts = {i["tap"]: i["vionet_starts"] for i in daemon.ctl_json("show", "interfaces")}
    os.kill(before["alpha"], signal.SIGKILL)
    after = daemon.wait_vionets(not_pids={before["alpha"]})
    assert after["beta"] == before["beta"]
    # QEMU reconnects; the parent hands the new connection to the new vionet.
    ping(daemon, "alpha", GUEST_B)
    tcp_transfer(daemon, "beta", "alpha", GUEST_A, 5003)
    ifaces = {i["tap"]: i for i in daemon.ctl_json("show", "interfaces")}
    assert ifaces[TAPS[0]]["vionet_starts"] == starts[TAPS[0]] + 1
    assert ifaces[TAPS[0]]["stats"]["connections"] == 1
    assert ifaces[TAPS[1]]["vionet_starts"] == starts[TAPS[1]]   # beta's untouched


def test_reload_with_a_broken_config_is_refused(daemon: Daemon, image: GuestImage) -> None:
    before = daemon.status()
    good = daemon.conf.read_text()
    daemon.conf.write_text(config_text(image, broken=True))
    try:
        res = daemon.ctl_run("reload")
    finally:
        daemon.conf.write_text(good)
    assert res.returncode == 1
    assert re.search(re.escape(str(daemon.conf)) + r":\d+: memory size too small", res.stderr), \
        res.stderr
    assert daemon.status() == before
    ping(daemon, "beta", GUEST_A)


def test_reload_restarts_only_what_changed(daemon: Daemon, image: GuestImage) -> None:
    before = daemon.status()
    good = daemon.conf.read_text()
    daemon.conf.write_text(config_text(image, alpha_memory="288M"))
    try:
        res = daemon.ctl_run("reload")
        assert res.returncode == 0, res.stderr
        after = daemon.status()
        assert after["beta"] == before["beta"]
        assert after["alpha"]["pid"] != before["alpha"]["pid"]
        assert after["alpha"]["memory"] == 288 * 1024 * 1024
        daemon.wait_vionets()
        ping(daemon, "alpha", GUEST_B)
    finally:
        daemon.conf.write_text(good)
        assert daemon.ctl_run("reload").returncode == 0


def test_stop_and_start_a_vm(daemon: Daemon) -> None:
    assert daemon.ctl_run("stop", "beta").returncode == 0
    assert daemon.status()["beta"]["state"] == "stopped"
    res = daemon.ctl_run("start", "beta")
    assert res.returncode == 0, res.stderr
    daemon.wait_vionets()
    # beta's console answers once it has booted; then traffic flows both ways again.
    ping(daemon, "beta", GUEST_A)
    ping(daemon, "alpha", GUEST_B)
