"""The sandbox steps on a real forked process (root): the kernel's view in
/proc/PID/status is the oracle (Uid, Groups, NoNewPrivs, Seccomp), and the
sandboxed process tries what it must not be able to do."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile

import pytest
from netns import NetNS, root_skip_reason

from vmdnet.privsep import sandbox
from vmdnet.tun import open_tap

# <linux/if_tun.h>: _IOW('T', 208, unsigned int)
TUNSETOFFLOAD = 0x400454D0

pytestmark = pytest.mark.root

# A forked child answers within a second; a loaded 2-core machine gets margin.
CHILD_TIMEOUT_S = 30


def skip_reason() -> str | None:
    return root_skip_reason()


def status_fields(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def child_attempts(tap_fd: int) -> list[str]:
    """What a sandboxed vionet must not manage; each entry is 'what:errno'."""
    results = []
    for what, fn in (("open-tun", lambda: os.open("/dev/net/tun", os.O_RDWR)),
                     ("open-any", lambda: os.open("/", os.O_RDONLY)),
                     ("setuid0", lambda: os.setuid(0)),
                     ("tunsetoffload", lambda: fcntl.ioctl(tap_fd, TUNSETOFFLOAD, 0)),
                     ("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))):
        try:
            fn()
            results.append(f"{what}:ok")
        except OSError as exc:
            results.append(f"{what}:{errno.errorcode.get(exc.errno or 0, exc.errno)}")
    return results


def test_enter_sandbox_in_a_child() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    ids = sandbox.ensure_user(sandbox.DEFAULT_USER)
    ns = NetNS("sandbox")
    try:
        with ns.entered():
            tap = open_tap("vnsb0")
        try:
            run_sandboxed_child(ids, tap.fd)
        finally:
            tap.close()
    finally:
        ns.close()


def run_sandboxed_child(ids: sandbox.Ids, tap_fd: int) -> None:
    root = tempfile.mkdtemp(prefix="vn-sandbox-")
    os.chmod(root, 0o755)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    leak = os.open("/dev/null", os.O_RDONLY)  # must be closed by close_other_fds
    pid = os.fork()
    if pid == 0:
        try:
            sandbox.enter_sandbox(ids, root, keep_fds={0, 1, 2, report_w, go_r, tap_fd})
            try:
                os.fstat(leak)
                leaked = "leak:open"
            except OSError:
                leaked = "leak:closed"
            os.write(report_w, " ".join([leaked, *child_attempts(tap_fd)]).encode() + b"\n")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(go_r)
    os.close(leak)
    try:
        report = os.read(report_r, 4096).decode().split()
        st = status_fields(pid)
        assert st["Uid"].split() == [str(ids.uid)] * 4
        assert st["Gid"].split() == [str(ids.gid)] * 4
        assert st["Groups"] == ""
        assert st["NoNewPrivs"] == "1"
        assert st["Seccomp"] == "2"
        assert os.readlink(f"/proc/{pid}/root") == root
        assert report == ["leak:closed", "open-tun:EPERM", "open-any:EPERM", "setuid0:EPERM",
                          "tunsetoffload:EPERM", "socket:EPERM"]
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        os.close(report_r)
        _, status = os.waitpid(pid, 0)
        os.rmdir(root)
    assert os.waitstatus_to_exitcode(status) == 0


def test_drop_privileges_refuses_root() -> None:
    with pytest.raises(sandbox.SandboxError):
        sandbox.drop_privileges(sandbox.Ids(0, 0))


def test_close_other_fds_keeps_only_the_named(tmp_path) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            a = os.open("/dev/null", os.O_RDONLY)
            b = os.open("/dev/null", os.O_RDONLY)
            sandbox.close_other_fds({b})
            try:
                os.fstat(a)
            except OSError:
                os.fstat(b)
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
