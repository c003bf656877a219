"""Liveness: a process that cannot make progress says so and ends, so that it can be restarted.

Each long-lived thread (the main loop, the capture) declares, before every call that may block,
how long it may take (``beat(name, allow_s)``); a thread that has not come back by then is
*stuck*. A watchdog thread checks the declarations every second:

- under systemd (``Type=notify``, ``WatchdogSec=``) it sends ``WATCHDOG=1`` over ``$NOTIFY_SOCKET``
  only while no thread is stuck, so a wedged daemon stops pinging and systemd restarts it;
- a stuck thread ends the process with exit status 1 in any case (in a container there is no
  systemd to notice), after one line on stderr naming the thread. A thread's allowance defaults to
  the hard limit (``[run] watchdog_s``), so the exit comes at most limit + 2 s after its last beat
  (a stuck capture thread is noticed by the main loop first, which shuts down in order).

sd_notify is a datagram on a Unix socket: a few lines here, no dependency.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

log = logging.getLogger(__name__)
GRACE_S = 1.0  # past a deadline, pings stop at once; the exit waits this long for an orderly one


def sd_notify(message: str, sock_path: str | None = None) -> bool:
    """Send one sd_notify message (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...); False without systemd."""
    path = sock_path if sock_path is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
        return True
    except OSError as e:
        log.debug("sd_notify %s failed: %s", message, e)
        return False


def systemd_interval_s() -> float | None:
    """Half of systemd's WatchdogSec for this process (None: no watchdog asked for)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return max(0.5, int(usec) / 2e6)


class Watchdog(threading.Thread):
    def __init__(self, limit_s: float, on_stuck=None, check_s: float = 1.0):
        super().__init__(name="watchdog", daemon=True)
        self.limit_s, self.check_s = float(limit_s), check_s
        self.on_stuck = on_stuck or self._exit
        self._deadlines: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.interval_s = systemd_interval_s()
        if self.interval_s:  # check often enough to ping on time
            self.check_s = min(self.check_s, self.interval_s / 2)
        self._last_ping = 0.0

    def beat(self, name: str, allow_s: float | None = None, doing: str = "") -> None:
        """``name`` is alive now and will beat again within ``allow_s`` (default: the limit)."""
        with self._lock:
            self._deadlines[name] = (time.monotonic() + (self.limit_s if allow_s is None else allow_s), doing)

    def done(self, name: str) -> None:
        """``name`` ended normally: no longer watched."""
        with self._lock:
            self._deadlines.pop(name, None)

    def stuck(self) -> list[tuple[str, float, str]]:
        """[(name, seconds over its deadline, what it was doing)] for every thread past its deadline."""
        now = time.monotonic()
        with self._lock:
            return [(n, now - d, doing) for n, (d, doing) in self._deadlines.items() if now > d]

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.wait(self.check_s):
            stuck = self.stuck()
            if not stuck:
                now = time.monotonic()
                if self.interval_s and now - self._last_ping >= self.interval_s:
                    sd_notify("WATCHDOG=1")
                    self._last_ping = now
                continue
            worst = max(stuck, key=lambda s: s[1])
            if worst[1] >= GRACE_S:  # the main loop, if alive, had its chance to shut down in order
                self.on_stuck(worst)
                return

    def _exit(self, worst) -> None:
        name, over, doing = worst
        print(f"edge_runtime: error: the {name} thread is stuck{' in ' + doing if doing else ''} "
              f"({over:.0f} s past its deadline): exiting so that the service can be restarted",
              file=sys.stderr, flush=True)
        sd_notify("STOPPING=1")
        os._exit(1)  # the stuck thread may hold locks a normal exit would wait for
