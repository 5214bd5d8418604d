"""The README's main job: vmdnetd on the bundled example vm.conf, end to end.

With no file to write first: the example configuration that ships with the
package (vmdnet.config.default_config_text(): one switch and two VMs, one of
them also on a local interface) runs under vmdnetd in a private network
namespace (vn-demo-<pid>), with the tiny test guest as both VMs' kernel.
The demo shows `vmdnetctl status`, moves traffic between the VMs (ping,
iperf3) and between a VM and the host over its local interface (DHCP lease
from vionet, ping), shows `vmdnetctl show interfaces`, and stops everything.

Run as root: `make demo` (or `python tests/demo.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

from guestlib import GuestImage, GuestNetns, remove_stale_netns  # noqa: E402
from test_daemon import Console  # noqa: E402

from vmdnet.config import default_config_text  # noqa: E402
from vmdnet.privsep import sandbox  # noqa: E402

NS_PREFIX = "vn-demo-"
# The guests' addresses on the example's switch "lan" (the example leaves them
# to the guests); the local interface's pair comes from `local prefix`.
ALPHA, BETA = "198.18.100.1", "198.18.100.2"
START_S = 30.0
BOOT_S = 300.0
STOP_S = 60.0
POLL_S = 0.2
CTL_TIMEOUT_S = 120


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Demo:
    def __init__(self, image: GuestImage, ns: GuestNetns, workdir: Path) -> None:
        self.ns = ns
        self.rundir = workdir / "run"
        self.ctl = str(workdir / "ctl.sock")
        conf = workdir / "vmdnet.conf"
        conf.write_text(default_config_text())
        self.log = workdir / "vmdnetd.log"
        argv = [sys.executable, "-m", "vmdnet.daemon", "-d", "-f", str(conf),
                "-r", str(self.rundir), "-s", self.ctl,
                "-D", f"kernel={image.kernel}", "-D", f"initramfs={image.initrd}"]
        with open(self.log, "wb") as logf:
            self.proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_S
        while not os.path.exists(self.ctl):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vmdnetd did not start:\n" + self.log.read_text())
            time.sleep(POLL_S)

    def ctl_run(self, *words: str) -> str:
        res = subprocess.run([sys.executable, "-m", "vmdnet.cli", "-s", self.ctl, *words],
                             capture_output=True, text=True, timeout=CTL_TIMEOUT_S)
        if res.returncode != 0:
            raise RuntimeError(f"vmdnetctl {' '.join(words)}: {res.stderr}")
        return res.stdout

    def wait_running(self) -> None:
        deadline = time.monotonic() + BOOT_S
        while time.monotonic() < deadline:
            vms = json.loads(self.ctl_run("-o", "json", "status"))
            if all(vm["state"] == "running" for vm in vms):
                return
            time.sleep(POLL_S)
        raise RuntimeError("the VMs did not start:\n" + self.log.read_text())

    def console(self, vm: str) -> Console:
        return Console(str(self.rundir / vm / "console.sock"))

    def guest(self, vm: str, cmd: str) -> str:
        rc, out = self.console(vm).run(cmd, wait=BOOT_S)
        if rc != 0:
            raise RuntimeError(f"{vm}: {cmd!r} failed ({rc}):\n{out}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def local_lease(d: Demo) -> str:
    """beta's local interface: a DHCP lease from vionet, as vmd gives one."""
    out = d.guest("beta", "ip link set eth1 up && udhcpc -i eth1 -n -q -t 5 -T 2 2>&1; "
                          "ip -4 -o addr show eth1")
    addr = out.split("inet ")[1].split("/")[0] if "inet " in out else ""
    if not addr:
        raise RuntimeError(f"beta got no DHCP lease on its local interface:\n{out}")
    return addr


def run_demo(image: GuestImage, workdir: Path) -> None:
    remove_stale_netns(NS_PREFIX)
    ns = GuestNetns(f"{NS_PREFIX}{os.getpid()}")
    d = None
    try:
        ns.run(["ip", "link", "set", "lo", "up"])
        say("vmdnetd on the bundled example vm.conf (switch 'lan', VMs alpha and beta)")
        print(default_config_text())
        d = Demo(image, ns, workdir)
        d.wait_running()
        say("vmdnetctl status")
        print(d.ctl_run("status"))
        say("alpha <-> beta on switch 'lan' (bridge vnbr0, one vionet per interface)")
        d.guest("alpha", f"ip addr add {ALPHA}/24 dev eth0")
        d.guest("beta", f"ip addr add {BETA}/24 dev eth0")
        print(d.guest("alpha", f"ping -c 3 -i 0.3 -W 5 {BETA}").strip().splitlines()[-2])
        d.guest("beta", "iperf3 -s -D -1")
        out = d.guest("alpha", f"for i in 1 2 3 4 5; do iperf3 -c {BETA} -n 30M -J "
                               "> /tmp/i.json && break; sleep 1; done; cat /tmp/i.json")
        sent = json.loads(out)["end"]["sum_sent"]
        print(f"iperf3 alpha -> beta: {sent['bytes'] / 1e6:.0f} MB in {sent['seconds']:.2f} s "
              f"= {sent['bits_per_second'] / 1e9:.2f} Gbit/s")
        say("beta <-> host on beta's local interface (vntap2)")
        addr = local_lease(d)
        host = ns.run(["ip", "-4", "-o", "addr", "show", "vntap2"]).stdout.split()[3]
        print(f"beta leased {addr}; the host end is {host}")
        print(d.guest("beta", f"ping -c 3 -i 0.3 -W 5 {host.split('/')[0]}")
              .strip().splitlines()[-2])
        say("vmdnetctl show interfaces")
        print(d.ctl_run("show", "interfaces"))
    finally:
        if d:
            d.close()
        ns.close()
    say("done: VMs, vionets and vmdnetd stopped, namespace removed")


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces, taps, privilege separation)",
              file=sys.stderr)
        return 1
    say("building (or reusing) the test guest: Debian 6.1 kernel + busybox + iperf3")
    image = GuestImage.build()
    sandbox.ensure_user(sandbox.DEFAULT_USER)
    workdir = Path(tempfile.mkdtemp(prefix="vmdnet-demo-"))
    workdir.chmod(0o755)
    try:
        run_demo(image, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
