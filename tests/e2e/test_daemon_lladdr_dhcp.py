"""vmdnetd end to end: DHCP on a local interface and a locked lladdr, with QEMU guests.

The daemon runs in the namespace vn-dhcp-<pid> on a config with two VMs:
"gamma" has a local interface (eth0: vionet serves it DHCP, the host end of
its /31 is 198.18.6.0) and, on switch "lan", an interface with a locked
lladdr (eth1, addressed by hand as 198.18.2.2/24); "delta" is on "lan" too
(198.18.2.3/24 from the kernel command line).  Checked, through the guests'
own tools: gamma's busybox udhcpc gets 198.18.6.1/31 with router 198.18.6.0
and then pings the host end; gamma reaches delta with its own MAC, but once
it takes another MAC its frames are dropped (counted by vionet as locked_src)
and unicast sent to the forged MAC is dropped on the way in (locked_dst).

Fixtures and helpers come from test_daemon.py; everything started is stopped
by PID and the namespace is deleted, even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from guestlib import GuestImage, GuestNetns, remove_stale_netns
from test_daemon import Daemon, image, skip_reason  # noqa: F401  (fixture)

from vmdnet.privsep import sandbox

pytestmark = [pytest.mark.root, pytest.mark.slow]

NS_PREFIX = "vn-dhcp-"
BRIDGE = "vnbr1"
TAP_LOCAL, TAP_LOCKED, TAP_DELTA = "vnlt0", "vnlt1", "vnlt2"
LOCAL_PREFIX = "198.18.6.0/24"
LOCAL_HOST, LOCAL_GUEST = "198.18.6.0", "198.18.6.1"
GAMMA_LAN, DELTA_LAN = "198.18.2.2", "198.18.2.3"
GAMMA_MAC, DELTA_MAC = "fe:e1:ba:d0:00:11", "fe:e1:ba:d0:00:12"
LOCAL_MAC = "fe:e1:ba:d0:00:10"
FORGED_MAC = "fe:e1:ba:d0:00:99"

# The guest image has busybox udhcpc but no default script: this one prints what
# it was given and applies the address (busybox exports ip, mask, router, lease).
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in bound|renew)
	echo "VN-LEASE ip=$ip mask=$mask router=$router lease=$lease serverid=$serverid"
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface"
	;;
esac
exit 0
"""


def config_text(image: GuestImage) -> str:  # noqa: F811
    return f"""# vmdnetd e2e test ({__name__})
vmm "/usr/bin/qemu-system-x86_64" "-accel" "tcg"
local prefix {LOCAL_PREFIX}
switch "lan" {{
	interface "{BRIDGE}"
}}

vm "gamma" {{
	memory 256M
	boot "{image.kernel}"
	initrd "{image.initrd}"
	cmdline "console=ttyS0 panic=-1"
	local interface "{TAP_LOCAL}" {{
		lladdr {LOCAL_MAC}
	}}
	interface "{TAP_LOCKED}" {{
		switch "lan"
		lladdr locked {GAMMA_MAC}
	}}
}}

vm "delta" {{
	memory 256M
	boot "{image.kernel}"
	initrd "{image.initrd}"
	cmdline "console=ttyS0 panic=-1 vn.ip={DELTA_LAN}/24"
	interface "{TAP_DELTA}" {{
		switch "lan"
		lladdr {DELTA_MAC}
	}}
}}
"""


@pytest.fixture(scope="module")
def ns(image: GuestImage) -> Iterator[GuestNetns]:  # noqa: F811
    remove_stale_netns(NS_PREFIX)
    netns = GuestNetns(f"{NS_PREFIX}{os.getpid()}")
    try:
        netns.run(["ip", "link", "set", "lo", "up"])
        yield netns
    finally:
        netns.close()


@pytest.fixture(scope="module")
def daemon(image: GuestImage, ns: GuestNetns) -> Iterator[Daemon]:  # noqa: F811
    sandbox.ensure_user(sandbox.DEFAULT_USER)
    workdir = Path(tempfile.mkdtemp(prefix="vn-dhcp-"))
    workdir.chmod(0o755)
    conf = workdir / "vmdnet.conf"
    conf.write_text(config_text(image))
    try:
        d = Daemon(ns, workdir, conf)
        try:
            d.wait_vionets()
            yield d
        finally:
            d.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(d: Daemon, vm: str, cmd: str) -> tuple[int, str]:
    return d.console(vm).run(cmd)


def iface_stats(d: Daemon, tap: str) -> dict:
    ifaces = {i["tap"]: i for i in d.ctl_json("show", "interfaces")}
    st = ifaces[tap]["stats"]
    assert st is not None, ifaces[tap]
    return st


def diagnostics(d: Daemon, tap: str) -> str:
    """vionet's counters and log for an assertion message."""
    logs = "".join(p.read_text(errors="replace")[-4000:] for p in d.rundir.glob("*/vionet*.log"))
    return f"\nstats: {iface_stats(d, tap)}\nvionet logs:\n{logs}\ndaemon:\n{d.log()[-3000:]}"


def test_local_interface_guest_gets_its_lease(daemon: Daemon) -> None:
    cmd = (f"cat > /tmp/udhcpc.sh <<'EOF'\n{UDHCPC_SCRIPT}EOF\n"
           "chmod +x /tmp/udhcpc.sh && ip link set eth0 up && "
           "udhcpc -i eth0 -n -q -t 5 -T 2 -s /tmp/udhcpc.sh && ip -4 -o addr show eth0")
    rc, out = run(daemon, "gamma", cmd)
    assert rc == 0, out + diagnostics(daemon, TAP_LOCAL)
    assert (f"VN-LEASE ip={LOCAL_GUEST} mask=31 router={LOCAL_HOST} lease=3600 "
            f"serverid={LOCAL_HOST}") in out, out
    assert f"inet {LOCAL_GUEST}/31" in out, out
    rc, out = run(daemon, "gamma", f"ping -c 3 -i 0.3 -W 5 {LOCAL_HOST}")
    assert rc == 0 and " 0% packet loss" in out, out
    st = iface_stats(daemon, TAP_LOCAL)
    assert st["dhcp"]["offers"] >= 1 and st["dhcp"]["acks"] >= 1, st["dhcp"]
    assert st["dhcp"]["lease_active"] and st["tx"]["intercepted"] >= 2
    assert st["rx"]["injected"] >= 2 and st["dhcp"]["malformed"] == 0


def test_locked_lladdr_stops_a_spoofing_guest(daemon: Daemon) -> None:
    rc, out = run(daemon, "gamma", f"ip addr add {GAMMA_LAN}/24 dev eth1; ip link set eth1 up; "
                                   f"ping -c 3 -i 0.3 -W 5 {DELTA_LAN}")
    assert rc == 0 and " 0% packet loss" in out, out
    before = iface_stats(daemon, TAP_LOCKED)
    assert before["locked"] and before["lladdr"] == GAMMA_MAC
    # Another MAC: its ARP requests (source and sender forged) never leave vionet.
    rc, out = run(daemon, "gamma", f"ip link set eth1 down; ip link set eth1 address {FORGED_MAC}"
                                   f" && ip link set eth1 up && ip neigh flush dev eth1; "
                                   f"ping -c 3 -i 0.3 -W 2 {DELTA_LAN}")
    assert rc != 0 and "100% packet loss" in out, out
    # delta sends unicast to the forged MAC: refused on the way into gamma.
    # (busybox: `ip neigh` only shows and flushes; `arp -s` sets an entry.)
    rc, out = run(daemon, "delta", f"arp -i eth0 -s {GAMMA_LAN} {FORGED_MAC} && "
                                   f"ping -c 3 -i 0.3 -W 2 {GAMMA_LAN}")
    assert rc != 0 and "100% packet loss" in out, out
    after = iface_stats(daemon, TAP_LOCKED)
    assert after["tx"]["drops"]["locked_src"] > before["tx"]["drops"]["locked_src"], after["tx"]
    assert after["rx"]["drops"]["locked_dst"] > before["rx"]["drops"]["locked_dst"], after["rx"]
    # Its own MAC again: traffic flows.
    rc, out = run(daemon, "delta", f"arp -i eth0 -d {GAMMA_LAN}")
    assert rc == 0, out
    rc, out = run(daemon, "gamma", f"ip link set eth1 down; ip link set eth1 address {GAMMA_MAC}"
                                   f" && ip link set eth1 up && ping -c 3 -i 0.3 -W 5 {DELTA_LAN}")
    assert rc == 0 and " 0% packet loss" in out, out
