"""vmdnet: a host-side virtio-net device for VMs, in the style of OpenBSD vmd's vionet."""

__version__ = "0.1.0"
