"""Stopping the children vmdnetd started (vionets, VMMs): by their Popen, never by name."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, SIGKILL if it is still there after GRACE seconds; always reap."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
