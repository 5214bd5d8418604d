"""The README's main job: a real guest on vionet, end to end, with no files to write.

Builds (or reuses) the tiny test guest, creates a private network namespace
(vn-demo-<pid>, 198.18.9.0/24 and fd00:9::/64 only), starts `vmdnet-vionet` on a
tap inside it, boots the guest under QEMU/TCG with a vhost-user virtio-net
device served by vionet, then shows: the features the guest negotiated, the
tap's offloads, ping both ways, iperf3 both ways, and vionet's counters.
Everything it started is stopped by PID and the namespace removed at the end.

Run as root: `make demo` (or `python tests/demo.py`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

from guestlib import Guest, GuestImage, GuestNetns, VhostUserNetdev, stop_process  # noqa: E402
from test_guest_vionet import Vionet  # noqa: E402

from vmdnet.vionet.main import stats_table  # noqa: E402
from vmdnet.virtio import features as vf  # noqa: E402

log = logging.getLogger("demo")

TAP = "vngv0"  # the name test_guest_vionet.Vionet gives vionet's tap
HOST4, GUEST4 = "198.18.9.1", "198.18.9.2"
HOST6, GUEST6 = "fd00:9::1", "fd00:9::2"
IPERF_PORT = 5201
IPERF_AMOUNT = "50M"
STEP_TIMEOUT = 180.0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def iperf_summary(raw: str) -> str:
    end = json.loads(raw)["end"]
    sent = end["sum_sent"]
    return f"{sent['bytes'] / 1e6:.0f} MB in {sent['seconds']:.2f} s = " \
           f"{sent['bits_per_second'] / 1e9:.2f} Gbit/s"


def run_demo(workdir: Path) -> None:
    say("building (or reusing) the test guest: Debian 6.1 kernel + busybox + iperf3")
    image = GuestImage.build()
    ns = GuestNetns(f"vn-demo-{os.getpid()}")
    iperf = None
    vionet = None
    try:
        ns.run(["ip", "link", "set", "lo", "up"])
        say(f"starting vmdnet-vionet on tap {TAP} in namespace {ns.name}")
        vionet = Vionet(ns, workdir)
        for argv in (["ip", "addr", "add", f"{HOST4}/24", "dev", TAP],
                     ["ip", "addr", "add", f"{HOST6}/64", "dev", TAP, "nodad"],
                     ["ip", "link", "set", TAP, "up"]):
            ns.run(argv)
        iperf = ns.popen(image.host_iperf3("-s", "-p", str(IPERF_PORT)),
                         stdout=open(workdir / "iperf3.log", "wb"), stderr=-2)
        say("booting the guest under QEMU (TCG), its NIC served by vionet over vhost-user")
        with Guest(image, VhostUserNetdev(vionet.sock), ip=f"{GUEST4}/24", ip6=f"{GUEST6}/64",
                   netns=ns.name, log_path=workdir / "guest.log") as g:
            g.wait_booted()
            feats = g.virtio_features()
            print("guest negotiated:", " ".join(n.removeprefix("VIRTIO_NET_F_")
                                                 for n in vf.names(feats)))
            offl = ns.run(["ethtool", "-k", TAP]).stdout.splitlines()
            print("tap offloads (TUNSETOFFLOAD from the guest's GUEST_* bits):",
                  "; ".join(x.strip() for x in offl if x.startswith(("tx-checksumming",
                            "tcp-segmentation", "\ttx-tcp6", "\ttx-tcp-ecn"))))
            say("ping guest -> host (IPv4, IPv6) and host -> guest")
            print(g.check(f"ping -c 3 -i 0.2 {HOST4}").strip().splitlines()[-2])
            print(g.check(f"ping -c 3 -i 0.2 {HOST6}").strip().splitlines()[-2])
            res = ns.run(image.host_busybox("ping", "-c", "3", "-i", "0.2", GUEST4))
            print(res.stdout.strip().splitlines()[-2])
            for label, flag in (("guest -> host", ""), ("host -> guest", "-R")):
                say(f"iperf3 {label} ({IPERF_AMOUNT})")
                cmd = (f"for i in 1 2 3 4 5; do iperf3 -J -c {HOST4} -p {IPERF_PORT} "
                       f"-n {IPERF_AMOUNT} {flag} > /tmp/i.json && break; sleep 1; done; "
                       "cat /tmp/i.json")
                print(iperf_summary(g.check(cmd, timeout=STEP_TIMEOUT)))
            say("vionet's counters (SIGUSR1)")
            print(stats_table(vionet.stats()))
    finally:
        if iperf:
            stop_process(iperf)
        if vionet:
            vionet.close()
        ns.close()
    say("done: guest stopped, vionet stopped, namespace removed")


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces, taps)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="vmdnet-demo-") as d:
        run_demo(Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
