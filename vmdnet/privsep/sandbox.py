"""The sandbox steps a vionet takes before it reads a byte from the guest.

Each step is a function, so the order is visible where they are called
(enter_sandbox) and each can be tested alone:

    close_other_fds(keep)       only the fds named survive
    chroot_empty(path)          the filesystem is an empty, root-owned directory
    drop_privileges(uid, gid)   setgroups([]), setresgid, setresuid: no way back
    no_new_privs()              PR_SET_NO_NEW_PRIVS: exec cannot gain privileges
    seccomp_allowlist()         only the system calls listed (vmdnet.privsep.seccomp)

ensure_user() runs in the parent (root): it creates the unprivileged account
with useradd(8) if it does not exist yet.  This module never opens devices.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from vmdnet.privsep import seccomp

log = logging.getLogger(__name__)

# The account vionet runs as (vmd runs its children as _vmd).
DEFAULT_USER = "_vmdnet"
# An empty directory only root can write to; vionet chroots into it.
DEFAULT_CHROOT = "/var/empty/vmdnet"
# useradd can wait for /etc/passwd's lock; it finishes in well under a second normally.
USERADD_TIMEOUT_S = 30
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
# <linux/prctl.h>
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    """A sandbox step failed; the process must not go on."""


@dataclass(frozen=True)
class Ids:
    """Who to become."""

    uid: int
    gid: int


def lookup_user(name: str) -> Ids | None:
    """The ids of NAME, or None if there is no such user."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return Ids(pw.pw_uid, pw.pw_gid)


def ensure_user(name: str = DEFAULT_USER) -> Ids:
    """The ids of NAME; create it first as a system account without login if missing."""
    ids = lookup_user(name)
    if ids is not None:
        return ids
    shell = next((s for s in NOLOGIN_SHELLS if os.path.exists(s)), "/bin/false")
    argv = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", shell, "--user-group", name]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True,
                       timeout=USERADD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot create user {name}: {exc}") from exc
    log.info("created system user %s", name)
    ids = lookup_user(name)
    if ids is None:
        raise SandboxError(f"useradd {name} succeeded but the user does not exist")
    return ids


def ensure_empty_dir(path: str = DEFAULT_CHROOT) -> str:
    """Create PATH (0755, root) if missing; refuse it unless it is an empty root-owned dir."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise SandboxError(f"{path}: not a directory owned by root and writable only by it")
    if os.listdir(path):
        raise SandboxError(f"{path}: not empty")
    return path


def close_other_fds(keep: Iterable[int]) -> None:
    """Close every fd except those in KEEP."""
    keep_sorted = sorted({fd for fd in keep if fd >= 0})
    low = 0
    for fd in keep_sorted:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def chroot_empty(path: str) -> None:
    """chroot(2) into PATH and chdir to its root."""
    os.chroot(path)
    os.chdir("/")


def drop_privileges(ids: Ids) -> None:
    """Become IDS for good: no supplementary groups, all three uids and gids set."""
    if ids.uid == 0 or ids.gid == 0:
        raise SandboxError("refusing to 'drop' to uid or gid 0")
    os.setgroups([])
    os.setresgid(ids.gid, ids.gid, ids.gid)
    os.setresuid(ids.uid, ids.uid, ids.uid)
    # Must be impossible now; if it works something above silently did not.
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SandboxError("could regain uid 0 after dropping privileges")


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: nothing this process execs can gain privileges."""
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def enter_sandbox(ids: Ids, root: str, keep_fds: Iterable[int]) -> None:
    """All steps, in the order that keeps each possible: the filter is built
    while the library can still be loaded, the fds are closed (nothing leaks
    into the sandbox), chroot while still root, then the ids, then
    no_new_privs (which seccomp requires unprivileged), then the filter last.
    Everything the process will import must be imported before this."""
    allowlist = seccomp.Filter()  # needs the filesystem: before chroot
    close_other_fds(keep_fds)
    chroot_empty(root)
    drop_privileges(ids)
    no_new_privs()
    allowlist.load()
    log.info("sandboxed: uid %d gid %d, root %s, seccomp on", ids.uid, ids.gid, root)


def group_name(gid: int) -> str:
    """A group's name for messages ("#gid" if it has none)."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"#{gid}"
