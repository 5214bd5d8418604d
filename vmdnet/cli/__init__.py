"""vmdnetctl: the control client of vmdnetd (main.py) and its output formats (format.py).

Layer rule: top layer, unprivileged. It talks to the control socket and
formats answers; it does no privileged work and imports nothing from the
daemon.
"""
