"""A seccomp allowlist for vionet, through libseccomp (libseccomp.so.2) and ctypes.

Every system call vionet may make after it is sandboxed is listed below with
the reason it is needed.  Everything else fails with EPERM (DEFAULT_ACTION):
vionet then logs and carries on, or exits and is restarted by the parent.
Notably absent: open/openat (no file or device, /dev/net/tun included),
socket/connect/bind (no new endpoints), execve, ptrace, mount, setuid and
friends, and ioctl other than the few requests listed (no TUNSETIFF or
TUNSETOFFLOAD: those are the parent's).

ctypes rather than the python3-seccomp binding: the binding is built for the
system python, this project runs on its own interpreter.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

log = logging.getLogger(__name__)

# Constants from <seccomp.h> (libseccomp 2.5).
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_CMP_EQ = 4
SCMP_FLTATR_CTL_TSYNC = 4
# The soname (Debian: libseccomp2); no find_library, which runs ldconfig.
LIBSECCOMP = "libseccomp.so.2"


def SCMP_ACT_ERRNO(err: int) -> int:  # noqa: N802 (the C macro's name)
    return 0x00050000 | (err & 0xFFFF)


# What a call outside the list gets. EPERM rather than a kill: Python reports
# the failing call as an OSError with a traceback in the log, which tells an
# operator more than a SIGSYS; the call fails either way.
DEFAULT_ACTION = SCMP_ACT_ERRNO(errno.EPERM)

# ioctl requests (<asm-generic/ioctls.h>) vionet may issue: nothing on the tap.
TCGETS = 0x5401  # isatty() on stdio (Python's I/O layer asks when writing logs)
FIONBIO = 0x5421  # non-blocking mode on a socket or eventfd
FIOCLEX = 0x5451  # close-on-exec (os.set_inheritable)
FIONCLEX = 0x5450  # not close-on-exec (os.set_inheritable)
ALLOWED_IOCTLS = (TCGETS, FIONBIO, FIOCLEX, FIONCLEX)

# name -> why vionet needs it.
ALLOWED_SYSCALLS: dict[str, str] = {
    "read": "tap frames in, eventfd kicks, vhost-user socket",
    "write": "tap frames out, eventfd calls, log lines to stderr",
    "readv": "tap reads into several buffers",
    "writev": "tap writes straight from guest memory (the C data path)",
    "recvmsg": "vhost-user messages with fds (SCM_RIGHTS); privsep frames, among them "
               "VMM connections (SCM_RIGHTS) the parent hands over after the sandbox",
    "sendmsg": "vhost-user replies, privsep frames",
    "recvfrom": "socket.recv on the vhost-user and privsep sockets",
    "sendto": "socket.send on the vhost-user and privsep sockets",
    "getsockopt": "socket(fileno=...) asks SO_TYPE/SO_DOMAIN of the fds it is given",
    "getsockname": "socket(fileno=...) and logging of the vhost-user socket",
    "getpeername": "socket objects' repr in log lines",
    "close": "closing fds the VMM sends and the device no longer needs",
    "shutdown": "closing the vhost-user connection",
    "mmap": "guest memory regions; Python's allocator",
    "munmap": "unmapping guest memory on SET_MEM_TABLE / disconnect; allocator",
    "mprotect": "thread stacks (guard pages); allocator",
    "mremap": "Python's allocator growing buffers",
    "madvise": "allocator and thread stacks freeing memory",
    "brk": "the C heap",
    "fstat": "checking a guest memory fd; Python file objects",
    "newfstatat": "fstat via glibc's fstatat on newer glibc",
    "lseek": "Python's buffered stderr checks its position",
    "fcntl": "O_NONBLOCK on the tap, eventfds and sockets; F_DUPFD_CLOEXEC for os.dup",
    "dup": "os.dup of guest memory fds (the mapping owns its own copy)",
    "dup3": "dup with O_CLOEXEC",
    "eventfd2": "each queue thread's stop eventfd",
    "poll": "queue threads wait for kicks, tap readiness, stop",
    "ppoll": "glibc may implement poll with ppoll",
    "epoll_create1": "selectors in the control loop",
    "epoll_ctl": "selectors in the control loop",
    "epoll_wait": "selectors in the control loop",
    "epoll_pwait": "glibc may implement epoll_wait with epoll_pwait",
    "select": "the privsep reader's wait",
    "pselect6": "glibc may implement select with pselect6",
    "futex": "locks and condition variables between threads (the GIL)",
    "clone": "starting queue threads",
    "clone3": "starting queue threads (newer glibc)",
    "set_robust_list": "new threads register their robust futex list",
    "rseq": "new threads register restartable sequences (glibc 2.35+)",
    "exit": "a thread ends",
    "exit_group": "the process ends",
    "gettid": "logging and thread identity",
    "getpid": "log lines carry the pid",
    "rt_sigaction": "signal handlers (SIGTERM, SIGUSR1)",
    "rt_sigprocmask": "threads block signals",
    "rt_sigreturn": "returning from a signal handler",
    "sigaltstack": "Python's faulthandler and new threads",
    "restart_syscall": "the kernel restarts an interrupted call",
    "clock_gettime": "time.monotonic (when the vDSO is not used)",
    "clock_nanosleep": "time.sleep",
    "nanosleep": "time.sleep on older glibc",
    "sched_yield": "lock hand-off between threads",
    "getrandom": "Python's random seeding, uuid",
    "tgkill": "Python's threading delivers signals to the main thread",
}


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class SeccompError(RuntimeError):
    """libseccomp is missing or refused the filter."""


def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
    except OSError as exc:
        raise SeccompError(f"libseccomp not found: {exc}") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SeccompError(f"{what}: {os.strerror(-rc)}")


class Filter:
    """The allowlist, built (library loaded, rules resolved) but not yet loaded.

    Build it before chroot (the library and its dependencies live on the
    filesystem), load() it as the last sandbox step.
    """

    def __init__(self, default_action: int = DEFAULT_ACTION) -> None:
        self._lib = _lib()
        ctx = self._lib.seccomp_init(default_action)
        if not ctx:
            raise SeccompError("seccomp_init failed")
        self._ctx: int | None = ctx
        try:
            # Every thread of the process, not only the caller.
            _check(self._lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "TSYNC")
            for name in ALLOWED_SYSCALLS:
                self._add(name, [])
            for request in ALLOWED_IOCTLS:
                self._add("ioctl", [_ArgCmp(1, SCMP_CMP_EQ, request, 0)])
        except BaseException:
            self.release()
            raise

    def _add(self, name: str, cmps: list[_ArgCmp]) -> None:
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            log.debug("syscall %s unknown on this architecture; not added", name)
            return
        arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
        _check(self._lib.seccomp_rule_add_array(self._ctx, SCMP_ACT_ALLOW, nr, len(cmps), arr),
               f"seccomp_rule_add({name})")

    def load(self) -> None:
        """Install the filter (needs no_new_privs first). Irreversible."""
        if self._ctx is None:
            raise SeccompError("filter already released")
        try:
            _check(self._lib.seccomp_load(self._ctx), "seccomp_load")
        finally:
            self.release()

    def release(self) -> None:
        if self._ctx is not None:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None


def load_allowlist(default_action: int = DEFAULT_ACTION) -> None:
    """Build and install the filter at once (when the filesystem is still there)."""
    Filter(default_action).load()
