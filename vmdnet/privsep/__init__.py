"""vmdnet.privsep: what the privileged parent and its unprivileged children share.

Layer rule: bottom layer. The imsg-like frame codec (codec.py, sans-IO), its
SOCK_SEQPACKET adapter (channel.py), the sandbox steps (sandbox.py) and the
seccomp allowlist (seccomp.py). It never opens devices and imports nothing
from the rest of vmdnet.
"""
