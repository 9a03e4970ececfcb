"""Several sidecar processes on one port (``ANTEROOM_WORKERS`` > 1): a parent that
only supervises and ``workers`` children that serve.

The parent runs no event loop and no thread, so forking a replacement stays safe at
any time. A worker that dies (killed, crashed) is reaped, logged with how it died
and started again after a backoff; SIGTERM or SIGINT drains every worker and ends
the parent. Workers end with the parent, even when it is killed hard."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("sidecar")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
RESTART_FIRST = 0.5  # seconds before a dead worker is started again
RESTART_MAX = 30.0  # the backoff's cap, for a worker that keeps dying
STEADY = 60.0  # a worker that lived this long starts the backoff over
QUICK = 10.0  # a death this soon after start counts towards giving up
GIVE_UP = 5  # quick deaths in a row of one worker: stop everything, exit 1
TICK = 0.1  # seconds between looks at the children


@dataclass
class Slot:
    worker: int
    pid: int = 0
    started: float = 0.0
    delay: float = 0.0  # the last backoff; 0: none yet
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts ``workers`` processes running ``serve(worker)``, keeps them running,
    stops them on SIGTERM/SIGINT within ``stop_within`` seconds."""

    def __init__(self, workers: int, serve: Callable[[int], None], stop_within: float) -> None:
        self.serve = serve
        self.stop_within = stop_within
        self.slots = [Slot(w) for w in range(workers)]
        self.stopping = False
        self.code = 0
        self._parent = os.getpid()

    def run(self) -> int:
        """Supervises until told to stop; the exit code (1: a worker kept dying at start)."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("supervising", extra={"workers": len(self.slots), "pid": self._parent})
            for slot in self.slots:
                self._start(slot)
            while not self.stopping:
                self._reap()
                self._restart_due()
                time.sleep(TICK)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.code

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start(self, slot: Slot) -> None:
        slot.restart_at = None
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # aiohttp installs its own handlers; until then SIGTERM ends the worker
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with(self._parent)
                self.serve(slot.worker)
                code = 0
            except BaseException:
                log.exception("worker failed", extra={"worker": slot.worker})
            finally:
                os._exit(code)  # never run the parent's cleanup in a child
        slot.pid, slot.started = pid, time.monotonic()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._died(slot, status)

    def _died(self, slot: Slot, status: int) -> None:
        now = time.monotonic()
        lived, pid = now - slot.started, slot.pid
        slot.pid = 0
        if os.WIFSIGNALED(status):
            how: dict[str, object] = {"signal": signal.Signals(os.WTERMSIG(status)).name}
        else:
            how = {"exit_code": os.WEXITSTATUS(status)}
        if lived >= STEADY:
            slot.delay = 0.0
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK else 0
        slot.delay = RESTART_FIRST if slot.delay == 0 else min(slot.delay * 2, RESTART_MAX)
        if slot.quick_deaths >= GIVE_UP:
            log.error(
                "worker keeps dying at start; stopping",
                extra={"worker": slot.worker, "pid": pid, "deaths": slot.quick_deaths, **how},
            )
            self.code = 1
            self.stopping = True
            return
        slot.restart_at = now + slot.delay
        log.error(
            "worker died",
            extra={
                "worker": slot.worker,
                "pid": pid,
                **how,
                "lived_s": round(lived, 1),
                "restart_in": slot.delay,
            },
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                self._start(slot)
                log.info("worker restarted", extra={"worker": slot.worker, "pid": slot.pid})

    def _stop_all(self) -> None:
        """Workers drain as one process does; one still running after ``stop_within``
        is killed."""
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_within
        pending = {s.pid for s in self.slots if s.pid}
        while pending and time.monotonic() < deadline:
            for pid in list(pending):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                pending.discard(pid)
            time.sleep(0.05)
        if pending:
            log.error("workers did not stop in time; killing them", extra={"pids": sorted(pending)})
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _die_with(parent: int) -> None:
    """A worker ends when the process that started it is gone, even killed hard."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)
