"""vmdnetd -> vionet: the interface configuration becomes vionet's arguments,
each value checked again by the configuration's validators on the privileged side."""

from __future__ import annotations

import ipaddress

import pytest

from vmdnet.config.validate import InvalidValue
from vmdnet.daemon.vionet import VionetSpec, config_args, dhcp_arg
from vmdnet.privsep.sandbox import Ids
from vmdnet.vionet.main import parse_args

MAC = bytes.fromhex("fee1bad00001")


def spec(**kw) -> VionetSpec:
    base = dict(iface_id=1, tap_fd=3, offloads=frozenset(), mac=MAC, sandbox=Ids(1, 1),
                chroot="/var/empty", log_path="/dev/null")
    base.update(kw)
    return VionetSpec(**base)


def test_plain_interface_gets_only_its_mac():
    assert config_args(spec()) == ["--mac", "fe:e1:ba:d0:00:01"]


def test_locked_local_rsc_interface():
    args = config_args(spec(locked=True, local_addr=ipaddress.IPv4Interface("198.18.4.0/31"),
                            rsc_interval_us=250))
    assert args == ["--mac", "fe:e1:ba:d0:00:01", "--locked",
                    "--dhcp", "198.18.4.1/31,198.18.4.0", "--rsc", "250"]
    # And vionet accepts exactly that.
    ns = parse_args(["--fd", "5", "--tap-fd", "6", *args])
    assert ns.lladdr == MAC and ns.locked and ns.rsc == 250
    assert ns.dhcp_config.client == ipaddress.IPv4Interface("198.18.4.1/31")
    assert ns.dhcp_config.router == ipaddress.IPv4Address("198.18.4.0")


@pytest.mark.parametrize("bad", [
    dict(mac=b"\x01" * 6), dict(mac=bytes(6)), dict(mac=b"\x02"),
    dict(rsc_interval_us=0), dict(rsc_interval_us=10**9),
    dict(local_addr=ipaddress.IPv4Interface("198.18.4.1/31")),      # not the host end
    dict(local_addr=ipaddress.IPv4Interface("198.18.4.0/30")),
])
def test_bad_values_refused(bad):
    with pytest.raises(InvalidValue):
        config_args(spec(**bad))


def test_dhcp_arg():
    assert dhcp_arg(ipaddress.IPv4Interface("100.64.0.2/31")) == "100.64.0.3/31,100.64.0.2"

