"""One thread per virtqueue: wait for kicks (TX) or the tap (RX), run C batches.

Per batch one C call (which releases the GIL), so the TX and RX threads of a
device run at once.  A thread owns its queue while it runs; the control
thread stops it (stop eventfd + join) before touching the queue, the memory
table or the fds.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time

from vmdnet.vionet.datapath import NO_BUFFERS, RingBroken, RxPath, TxPath

log = logging.getLogger(__name__)

# Chains (TX) or packets (RX) per C call: large enough to amortize the Python
# wake-up, small enough that the other direction's thread gets the GIL often.
BATCH_BUDGET = 256
# RX with no guest buffers: how long to wait for the guest to post some before
# what waits is dropped and counted.  Meanwhile the tap's own queue holds (and
# when full, drops) new packets, as with QEMU's tap backend.  A slow guest
# (TCG) pauses for tens of milliseconds; one that posts nothing for a second
# is not reading, and stale packets are better dropped than delivered late.
RX_NO_BUFFER_WAIT_MS = 1000
# RX waiting for buffers of a guest without a kick fd (vhost-user NOFD): how
# often to look at its ring (TX polls such a guest every millisecond too).
NOFD_POLL_MS = 1
# TX when the tap refuses more (EAGAIN): how long to wait for room per try.
TX_TAP_FULL_WAIT_MS = 10


def _drain_eventfd(fd: int) -> None:
    try:
        os.read(fd, 8)
    except (BlockingIOError, InterruptedError):
        pass


class QueueWorker(threading.Thread):
    """Runs one queue until stopped; `broken` is set if the guest broke the ring."""

    def __init__(self, name: str, path: TxPath | RxPath, kick_fd: int | None) -> None:
        super().__init__(name=name, daemon=True)
        self.path = path
        self.kick_fd = kick_fd
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.broken: RingBroken | None = None
        self.error: BaseException | None = None

    def stop(self) -> None:
        """Ask the thread to stop and wait for it; hand on coalesced data still held."""
        os.eventfd_write(self._stop_fd, 1)
        if self.is_alive():
            self.join()
        os.close(self._stop_fd)
        if isinstance(self.path, RxPath) and not self.broken and not self.error:
            try:
                self.path.flush_coalesced()
            except (RingBroken, OSError) as exc:
                log.info("%s: held coalesced data dropped at stop: %s", self.name, exc)

    def _wait(self, fds: list[tuple[int, int]], timeout_ms: int | None) -> set[int]:
        poller = select.poll()
        poller.register(self._stop_fd, select.POLLIN)
        for fd, ev in fds:
            poller.register(fd, ev)
        ready = {fd for fd, _ in poller.poll(timeout_ms)}
        if self._stop_fd in ready:
            raise _Stop
        if self.kick_fd is not None and self.kick_fd in ready:
            _drain_eventfd(self.kick_fd)
        return ready

    def run(self) -> None:
        try:
            if isinstance(self.path, TxPath):
                self._run_tx(self.path)
            else:
                self._run_rx(self.path)
        except _Stop:
            pass
        except RingBroken as exc:
            self.broken = exc
            log.warning("%s: %s; queue stopped until the VMM sets it up again", self.name, exc)
        except OSError as exc:
            self.error = exc
            log.error("%s: %s; queue stopped", self.name, exc)

    def _kick_fds(self) -> list[tuple[int, int]]:
        return [(self.kick_fd, select.POLLIN)] if self.kick_fd is not None else []

    def _run_tx(self, tx: TxPath) -> None:
        vring = tx.vring
        # Without a kick fd the front-end expects polling (vhost-user NOFD).
        idle_ms = None if self.kick_fd is not None else 1
        while True:
            vring.notify_disable()
            while True:
                n = tx.drain(BATCH_BUDGET)
                if n == BATCH_BUDGET:
                    continue
                if vring.avail_count() > 0:
                    # Chains left but the tap took no more: wait for room.
                    self._wait([(tx.tap_fd, select.POLLOUT)], TX_TAP_FULL_WAIT_MS)
                    continue
                if not vring.notify_enable():
                    break
                vring.notify_disable()
            self._wait(self._kick_fds(), idle_ms)

    def _run_rx(self, rx: RxPath) -> None:
        vring = rx.vring
        vring.notify_disable()
        while True:
            rc = rx.fill(BATCH_BUDGET)
            if rc == BATCH_BUDGET:
                continue
            if rc == NO_BUFFERS or rx.parked_len:
                # Also after a batch that delivered some: a packet parked at
                # its end waits for buffers, not for the tap.
                self._wait_for_buffers(rx)
                continue
            # Sleep until the tap has data, a frame was injected (fill()
            # delivers those first) or held coalesced data is due (fill()
            # delivers what is due before reading).
            inject = rx.inject
            fds = [(rx.tap_fd, select.POLLIN)]
            if inject is not None:
                fds.append((inject.fd, select.POLLIN))
            ready = self._wait(fds, rx.coalesce_wait_ms())
            if inject is not None and inject.fd in ready:
                inject.clear()

    def _wait_for_buffers(self, rx: RxPath) -> None:
        """The guest's buffers are too few for the next packet: wait for more.

        Sleep until the guest posts buffers beyond those fill() has seen (a
        kick), not while some are merely available: those are already too
        few, and looping on them spun this thread without ever looking at
        its stop request.  A parked packet that can never fit (the guest has
        made its whole ring available) is dropped at once; otherwise what
        waits is dropped when no buffers come in RX_NO_BUFFER_WAIT_MS.
        """
        vring = rx.vring
        seen = vring.avail_seen
        vring.notify_enable()
        if vring.avail_seen == seen and rx.parked_len and vring.avail_count() >= vring.num:
            vring.notify_disable()
            rx.discard(0)
            return
        deadline = time.monotonic() + RX_NO_BUFFER_WAIT_MS / 1000
        # A guest without a kick fd never kicks: look at its ring now and then.
        step_ms = RX_NO_BUFFER_WAIT_MS if self.kick_fd is not None else NOFD_POLL_MS
        while vring.avail_seen == seen:
            left_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                rx.discard(BATCH_BUDGET)
                break
            if self._wait(self._kick_fds(), min(step_ms, left_ms)):
                break
            vring.avail_count()  # updates avail_seen
        vring.notify_disable()


class _Stop(Exception):
    """Internal: the stop eventfd fired."""


def set_nonblocking(fd: int) -> None:
    """The tap fd is shared by both threads; neither may block in read or write."""
    os.set_blocking(fd, False)

