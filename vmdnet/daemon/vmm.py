"""Launching a VM's VMM (QEMU) as the VM's owner.

QEMU gets: memfd-backed shared guest memory (vhost-user needs it), one
vhost-user netdev per interface (QEMU connects, reconnecting every
RECONNECT_S when its vionet goes away), the kernel/initrd/cmdline from
`boot`, virtio disks, and a serial console on a unix socket that is also
logged to a file.  QEMU quirks measured here: under TCG a vhost-user
virtio-net-pci with MSI-X crashes QEMU 7.2, hence vectors=0.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from vmdnet.config import Vm
from vmdnet.config.limits import MiB
from vmdnet.daemon.procs import stop_process

# QEMU retries a lost vhost-user connection this often (seconds); the parent
# hands the new connection to the interface's vionet (restarted if it died).
RECONNECT_S = 1
# SIGTERM lets QEMU exit; past this grace it is killed.
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class VmPaths:
    """Files of one VM under the run directory."""

    dir: str

    @property
    def console_socket(self) -> str:
        return os.path.join(self.dir, "console.sock")

    @property
    def console_log(self) -> str:
        return os.path.join(self.dir, "console.log")

    @property
    def vmm_log(self) -> str:
        return os.path.join(self.dir, "vmm.log")


def qemu_escape(value: str) -> str:
    """A value inside a QEMU -option list: commas are doubled."""
    return value.replace(",", ",,")


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def qemu_argv(vm: Vm, vmm_path: str, vmm_args: tuple[str, ...], paths: VmPaths,
              nics: list[tuple[str, bytes]]) -> list[str]:
    """QEMU's argv. NICS: (vhost-user socket path, guest MAC) per interface, in order."""
    mem_mb = vm.memory // MiB
    argv = [vmm_path, *vmm_args, "-name", vm.name, "-m", f"{mem_mb}M", "-smp", "1",
            "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on",
            "-numa", "node,memdev=mem",
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-chardev", (f"socket,id=con0,path={qemu_escape(paths.console_socket)},"
                         f"server=on,wait=off,logfile={qemu_escape(paths.console_log)},"
                         "logappend=on"),
            "-serial", "chardev:con0"]
    if vm.boot is not None:
        argv += ["-kernel", vm.boot]
        if vm.initrd is not None:
            argv += ["-initrd", vm.initrd]
        if vm.cmdline is not None:
            argv += ["-append", vm.cmdline]
    for i, disk in enumerate(vm.disks):
        fmt = f",format={disk.format.value}" if disk.format is not None else ""
        argv += ["-drive", f"file={qemu_escape(disk.path)},if=virtio,index={i}{fmt}"]
    for i, (sock, mac) in enumerate(nics):
        argv += ["-chardev", f"socket,id=nc{i},path={qemu_escape(sock)},reconnect={RECONNECT_S}",
                 "-netdev", f"vhost-user,id=net{i},chardev=nc{i}",
                 "-device", f"virtio-net-pci,netdev=net{i},mac={mac_text(mac)},vectors=0"]
    return argv


def launch(argv: list[str], uid: int, gid: int | None, paths: VmPaths) -> subprocess.Popen[bytes]:
    """Start the VMM as uid/gid (no supplementary groups) with its output in vmm.log."""
    with open(paths.vmm_log, "ab") as logf:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, user=uid,
                                group=gid, extra_groups=[], start_new_session=True,
                                cwd=paths.dir)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, SIGKILL after STOP_GRACE_S, reap."""
    stop_process(proc, STOP_GRACE_S)
