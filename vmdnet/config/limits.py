"""Limits and defaults of the configuration, each with the reason for its value.

The parser and the privileged daemon use the same numbers: a value the
parser accepts is one the daemon accepts at its boundary.
"""

from __future__ import annotations

import ipaddress

# Linux IFNAMSIZ is 16 bytes including the terminating NUL (include/uapi/linux/if.h).
IFNAMSIZ = 16
IFNAME_MAX = IFNAMSIZ - 1

# vmd's VMM_MAX_NAME_LEN is 64 bytes including the NUL; VM and switch names
# also name sockets and log lines, so keep vmd's bound.
NAME_MAX = 63

# Linux PATH_MAX (include/uapi/linux/limits.h), including the NUL.
PATH_MAX = 4096

# struct sockaddr_un.sun_path is 108 bytes on Linux, including the NUL.
SUN_PATH_MAX = 107

# x86 COMMAND_LINE_SIZE: the boot protocol's limit for the kernel command line.
CMDLINE_MAX = 2047

# Guest memory. Below 32 MiB no x86-64 Linux kernel boots, and a bare number is
# bytes (as in vmd), so "memory 512" is a typo worth an error. 1 TiB is more
# than any host this runs on and catches unit slips such as "512T".
MiB = 1024 * 1024
MEMORY_MIN = 32 * MiB
MEMORY_MAX = 1024 * 1024 * MiB
# vmd's default memory size for a VM.
DEFAULT_MEMORY = 512 * MiB

# Each interface costs one vionet process, one tap and one PCI slot; bound it
# so a configuration cannot start hundreds of processes per VM. (vmd: 4.)
MAX_NICS_PER_VM = 8

# vmd's VMM_MAX_DISKS_PER_VM; each disk is one virtio-blk PCI slot.
MAX_DISKS_PER_VM = 4

# argv for the VMM is bounded so a config cannot build an argv beyond ARG_MAX.
MAX_VMM_ARGS = 256

# RSC coalescing interval in microseconds. QEMU's default rsc_interval is
# 300000 ns (300 us). Above 100 ms a held segment outlives TCP's delayed-ACK
# timer and stalls ACK-clocked senders; 0 would disable coalescing, which is
# what "no rsc" says.
RSC_INTERVAL_DEFAULT_US = 300
RSC_INTERVAL_MIN_US = 1
RSC_INTERVAL_MAX_US = 100_000

# Local interfaces take a /31 each (host end and guest end) out of the local
# prefix, so a longer prefix cannot hold even one.
LOCAL_PREFIX_MAX_LEN = 31
# vmd's rule: the IPv6 local prefix is /64 or shorter (each interface gets a /64).
LOCAL_PREFIX6_MAX_LEN = 64
# vmd's defaults: CGN space for IPv4; with "local inet6" and no prefix the
# daemon draws a random prefix from the unique local range fd00::/8.
DEFAULT_LOCAL_PREFIX = ipaddress.IPv4Network("100.64.0.0/10")
LOCAL_INET6_AUTO_RANGE = ipaddress.IPv6Network("fd00::/8")

DEFAULT_VMM = "/usr/bin/qemu-system-x86_64"
DEFAULT_CONFIG_PATH = "/etc/vmdnet.conf"

# Lexer limits. One file is read whole; 1 MiB is far above any real config
# and keeps a mistaken "include" of a huge file from eating memory.
MAX_FILE_BYTES = 1024 * 1024
# vmd's lexer buffer is 8096 bytes; a token longer than that is an error.
MAX_TOKEN_LEN = 8192
# Nested includes; deeper nesting is almost surely a mistake.
MAX_INCLUDE_DEPTH = 16
# Total files included: without it a few files including each other many
# times (no cycle) grow the work exponentially.
MAX_INCLUDED_FILES = 256
