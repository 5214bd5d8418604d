"""vmdnetd: the privileged parent (parent.py), its control socket (control.py), the
vionet children it supervises (vionet.py), the VMMs it launches (vmm.py) and
the netlink set-up of bridges and taps (netlink.py).

Layer rule: top layer. It may parse configuration, open taps and talk
netlink; it never parses packets.
"""
