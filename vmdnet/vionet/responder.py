"""The thread that answers the guest's DHCP: intercept ring in, inject ring out.

The TX queue's C code puts the guest's DHCP frames into the intercept ring
and signals its eventfd; this thread drains the ring in batches, hands each
frame to the sans-IO DhcpServer with the current monotonic time, and puts
each reply into the inject ring, whose eventfd wakes the RX queue's thread
(it delivers injected frames before the tap's).  It is the only consumer of
the intercept ring and the only producer of the inject ring.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

from vmdnet.vionet.datapath import PacketRing
from vmdnet.vionet.dhcp import DhcpServer

log = logging.getLogger(__name__)


class DhcpResponder(threading.Thread):
    """Serves DHCP for one interface until stop()."""

    def __init__(self, server: DhcpServer, intercept: PacketRing, inject: PacketRing) -> None:
        super().__init__(name="vionet-dhcp", daemon=True)
        self.server = server
        self.intercept = intercept
        self.inject = inject
        self.inject_full = 0
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    @property
    def fds(self) -> set[int]:
        """Descriptors the thread needs (kept when the sandbox closes the rest)."""
        return {self._stop_fd, self.intercept.fd, self.inject.fd}

    def stop(self) -> None:
        os.eventfd_write(self._stop_fd, 1)
        if self.is_alive():
            self.join()
        os.close(self._stop_fd)

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._stop_fd, select.POLLIN)
        poller.register(self.intercept.fd, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_fd in ready:
                return
            self.intercept.clear()
            self.serve_batch(time.monotonic())

    def serve_batch(self, now: float) -> int:
        """Answer what the intercept ring holds; return replies injected."""
        sent = 0
        for frame in self.intercept.drain():
            reply = self.server.receive(frame, now)
            if reply is None:
                continue
            if self.inject.put(reply):
                sent += 1
            else:
                self.inject_full += 1
                log.info("DHCP reply dropped: the guest is not taking frames (inject ring full)")
        return sent

    def stats(self) -> dict[str, object]:
        return {**self.server.stats(time.monotonic()), "inject_full": self.inject_full}
