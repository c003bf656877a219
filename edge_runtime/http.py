"""HTTP (standard library): / (a live page), /healthz, /metrics (Prometheus), /latest, /stream.mjpg.

Binds loopback unless told otherwise; a non-loopback bind needs a token (checked at config time)
and every request must then carry ``Authorization: Bearer <token>`` (or ``?token=``, for the page). Slow or idle clients are
dropped after ``timeout_s``, and at most ``max_clients`` connections are served at once, of which
one address may hold at most ``max_streams_per_client`` MJPEG streams. Without a token, the Host
header must name this machine by a loopback name or one of ``hosts`` (DNS rebinding). Every reply
says nosniff and may not be framed by another site; the page has a restrictive CSP.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from .sinks import Sink
from .stats import RecentEvents

log = logging.getLogger(__name__)
PAGE = Path(__file__).resolve().parent / "web" / "index.html"  # the live page: MJPEG view + track table
TOKEN_IN_QUERY = re.compile(r"token=[^&\s]*")


def query_token(query: str) -> str:
    """``token`` from a query string; "+" stays "+" (a bearer token may hold it; forms' "+ = space" does not apply)."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "token":
            return unquote(value)
    return ""


SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                    ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"))
PAGE_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'")


def _loopback_host(name: str) -> bool:
    import ipaddress
    name = name.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port ('[::1]:8080' -> '::1')."""
    header = header.strip()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Handler(BaseHTTPRequestHandler):
    server_version = "fer-edge"
    app: "HttpServer"  # set on the subclass

    def end_headers(self):
        for k, v in SECURITY_HEADERS:
            self.send_header(k, v)
        if not getattr(self, "_csp_sent", False):  # error replies (400, 501) too
            self.send_header("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
        self._csp_sent = False
        super().end_headers()

    def _host_allowed(self) -> bool:
        if self.app.token:  # another site's page cannot know it: the token is the protection
            return True
        name = host_name(self.headers.get("Host", "")).lower()
        return _loopback_host(name) or name in self.app.hosts

    def log_message(self, fmt, *args):  # route access logs to logging at debug level, tokens masked
        log.debug("%s " + fmt, self.client_address[0],  # numbers stay numbers: log_error's fmt has a %d
                  *(TOKEN_IN_QUERY.sub("token=***", a) if isinstance(a, str) else a for a in args))

    def _send(self, code: int, body: bytes, ctype: str, csp: str = "default-src 'none'; frame-ancestors 'none'"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Security-Policy", csp)
        self._csp_sent = True
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self, query: str) -> bool:
        """``Authorization: Bearer <token>``, or ``?token=<token>`` (a browser's <img> sends no headers)."""
        want = self.app.token.encode()
        got = self.headers.get("Authorization", "")
        if got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), want):
            return True
        given = query_token(query)
        return hmac.compare_digest(given.encode(), want)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.request_done(self.connection)  # complete: the slow-client deadline no longer applies
        return ok

    def do_GET(self):  # noqa: N802 - http.server API
        app = self.app
        path, _, query = self.path.partition("?")
        if not self._host_allowed():
            return self._send(421, b"unknown host name: add it to [http] hosts\n", "text/plain")
        if app.token and not self._authorized(query):
            return self._send(401, b"unauthorized\n", "text/plain")
        if path in ("/", "/index.html"):
            return self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8", csp=PAGE_CSP)
        if path == "/healthz":
            snap = app.stats.snapshot()
            body = {"status": snap["status"], "reason": snap["reason"], "uptime_s": snap["uptime_s"],
                    "fps": snap["fps"], "tracks_active": snap["tracks_active"],
                    "frames_processed": snap["frames_processed"],
                    "model": snap.get("model"), "model_choice": snap.get("model_choice")}
            return self._send(200 if snap["status"] == "ok" else 503, json.dumps(body).encode(), "application/json")
        if path == "/metrics":
            return self._send(200, app.stats.prometheus().encode(), "text/plain; version=0.0.4")
        if path == "/latest":
            return self._send(200, json.dumps(app.recent.latest_events()).encode(), "application/json")
        if path == "/stream.mjpg" and app.jpeg is not None:
            client = self.client_address[0]
            if not app.viewer_start(client):
                return self._send(429, b"too many streams from this address\n", "text/plain")
            try:
                return self._stream()
            finally:
                app.viewer_end(client)
        self._send(404, b"not found\n", "text/plain")

    def _stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        last = None
        try:
            while not self.app.stopping.is_set():
                jpg = self.app.jpeg()
                if jpg is not None and jpg is not last:
                    last = jpg
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpg)).encode() + b"\r\n\r\n" + jpg + b"\r\n")
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n"
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in SECURITY_HEADERS)
        + b"Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n\r\n")


class _BoundedServer(ThreadingHTTPServer):
    """At most ``max_clients`` connections at once, and at most ``per_client`` from one address (one
    more gets 503 and is closed before anything is read: an address that drips headers or holds
    streams cannot take the slots of the others, /healthz's included). A client whose request line
    and headers are not complete ``timeout_s`` after it connected is cut off, however slowly it drips
    them."""
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of clients is accepted (and refused) at once

    def __init__(self, address, handler, stats, max_clients: int, timeout_s: float, per_client: int = 8):
        self.stats, self.slots, self.timeout_s = stats, threading.BoundedSemaphore(max_clients), timeout_s
        self.per_client = min(per_client, max_clients)
        self.by_client: dict[str, int] = {}  # address -> connections held
        self.pending: dict = {}  # socket -> deadline for its request to be complete
        self.pending_lock = threading.Lock()
        super().__init__(address, handler)

    def _refuse(self, request):
        self.stats.inc("http_refused")
        try:
            request.setblocking(False)
            request.send(BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request(self, request, client_address):
        addr = client_address[0]
        with self.pending_lock:
            mine = self.by_client.get(addr, 0)
            if mine >= self.per_client:
                addr = None
            else:
                self.by_client[client_address[0]] = mine + 1
        if addr is None:
            return self._refuse(request)
        if not self.slots.acquire(blocking=False):
            self._release_client(client_address[0])
            return self._refuse(request)
        with self.pending_lock:
            self.pending[request] = time.monotonic() + self.timeout_s
        try:
            super().process_request(request, client_address)
        except Exception:
            self.request_done(request)
            self.slots.release()
            self._release_client(client_address[0])
            raise

    def _release_client(self, addr: str) -> None:
        with self.pending_lock:
            self.by_client[addr] -= 1
            if not self.by_client[addr]:
                del self.by_client[addr]

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.request_done(request)
            self.slots.release()
            self._release_client(client_address[0])

    def request_done(self, request) -> None:
        with self.pending_lock:
            self.pending.pop(request, None)

    def reap(self, stopping: threading.Event) -> None:
        """Cut off clients whose request is still incomplete at its deadline (the handler's own
        timeout is per read: a client sending a byte a second would never reach it)."""
        while not stopping.wait(0.25):
            now = time.monotonic()
            with self.pending_lock:
                late = [r for r, deadline in self.pending.items() if deadline < now]
                for r in late:
                    self.pending.pop(r)
            for r in late:
                try:
                    r.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns; it ends
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        """A client that hangs up mid-reply is routine: a debug line. Anything else is a bug: logged whole."""
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError)):
            log.debug("HTTP client %s: %s", client_address[0], err)
        else:
            log.exception("HTTP request from %s failed", client_address[0])


class HttpServer(Sink):
    """The daemon's HTTP side as a sink: it observes every event for /latest and stops at close."""

    def __init__(self, bind: str, stats, token: str = "", jpeg=None, timeout_s: float = 10.0, max_clients: int = 32,
                 hosts=(), max_streams_per_client: int = 2, max_per_client: int = 8):
        host, _, port = bind.rpartition(":")
        self.stats, self.token, self.jpeg = stats, token, jpeg
        self.recent = RecentEvents()  # /latest
        self.hosts = {h.lower().strip("[]") for h in hosts} | ({host.strip("[]").lower()} if host else set())
        self.max_streams = max_streams_per_client
        self._viewers: dict[str, int] = {}
        self._viewers_lock = threading.Lock()
        self.stopping = threading.Event()
        # timeout: a client that sends no complete request (or stops reading) within it is dropped
        handler = type("Handler", (_Handler,), {"app": self, "timeout": timeout_s})
        host = host.strip("[]")
        server = _BoundedServer
        if ":" in host:  # an IPv6 address
            server = type("BoundedServer6", (_BoundedServer,), {"address_family": socket.AF_INET6})
        try:
            self.httpd = server((host, int(port)), handler, stats, max_clients, timeout_s, max_per_client)
        except OSError as e:
            raise OSError(f"http.bind {bind}: {e.strerror or e}") from None
        self.address = "%s:%d" % self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="http", daemon=True)
        self._thread.start()
        threading.Thread(target=self.httpd.reap, args=(self.stopping,), name="http-reaper", daemon=True).start()
        log.info("HTTP on http://%s (/ /healthz /metrics /latest%s)", self.address, " /stream.mjpg" if jpeg else "")


    @classmethod
    def from_config(cls, h, stats, jpeg) -> "HttpServer":
        """From the config's ``[http]`` section (``config.HttpConfig``); ``jpeg``: the latest annotated
        frame for /stream.mjpg, used only when ``h.stream``."""
        return cls(h.bind, stats, h.token, jpeg if h.stream else None, h.timeout_s, h.max_clients, hosts=h.hosts,
                   max_streams_per_client=h.max_streams_per_client, max_per_client=h.max_per_client)
    def viewer_start(self, client: str) -> bool:
        with self._viewers_lock:
            if self._viewers.get(client, 0) >= self.max_streams:
                return False
            self._viewers[client] = self._viewers.get(client, 0) + 1
            return True

    def viewer_end(self, client: str) -> None:
        with self._viewers_lock:
            self._viewers[client] -= 1
            if not self._viewers[client]:
                del self._viewers[client]

    def observe(self, event: dict) -> None:
        self.recent.record(event)

    def close(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
