"""The sandbox's HTTP layer: CaptchaAI's ``in.php``/``res.php`` wire format over the model, plus admin JSON.

A standard-library threading server is enough: solves cost no thread (the model computes them from the
clock), so the only threads are one per client connection, and HTTP/1.1 keep-alive lets a client reuse
its connection for hundreds of requests per second. Faults are acted out here because they are about
the transport (status codes, HTML bodies, stalls, resets); admin endpoints are never faulted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Mapping
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from captcha_fleet.apps.sandbox.config import SandboxConfig
from captcha_fleet.apps.sandbox.faults import MAINTENANCE_PAGE, FaultInjector, nginx_error_page
from captcha_fleet.apps.sandbox.model import Clock, Reply, Sandbox
from captcha_fleet.contract.config import ConfigError
from captcha_fleet.contract.log_redaction import redact
from captcha_fleet.contract.start_stop import StartStop

log = logging.getLogger("captcha_fleet.apps.sandbox")

MAX_BODY_BYTES = 8 * 1024 * 1024
IDLE_TIMEOUT_S = 60.0  # an idle keep-alive connection is closed after this long


class _SandboxHTTPServer(ThreadingHTTPServer):
    """A threading server that remembers its open connections, so ``stop()`` can end idle keep-alives."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, faults: FaultInjector) -> None:
        self.sandbox = sandbox
        self.faults = faults
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._idle:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._idle:
            self._connections.discard(conn)
            self._idle.notify_all()

    def close_connections(self, timeout_s: float) -> None:
        """Wake every handler blocked on a client and wait (bounded) for them to finish."""
        with self._idle:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._idle.wait_for(lambda: not self._connections, timeout=timeout_s)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up mid-answer are normal here (timeouts, resets); anything else is a bug."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One client connection; requests on it are served in turn (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "captcha-fleet-sandbox"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would add ~40 ms

    @property
    def sandbox_server(self) -> _SandboxHTTPServer:
        return cast(_SandboxHTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        self.sandbox_server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sandbox_server.untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), redact(format % args))

    # --- routing -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        endpoint = url.path.lstrip("/")
        body = self._read_body()
        if body is None:
            return
        srv = self.sandbox_server
        srv.sandbox.note_request(endpoint)
        try:
            if endpoint in ("in.php", "res.php"):
                params, files = parse_form(url.query, self.headers.get("Content-Type", ""), body)
                self._api(endpoint, params, files)
            elif endpoint.startswith("admin/"):
                self._admin(endpoint.removeprefix("admin/"), body)
            else:
                self._send(404, nginx_error_page(404, "Not Found"), "text/html")
        except Exception:
            log.exception("sandbox: %s %s failed", self.command, redact(url.path))
            self._send_json(500, {"error": "internal error, see the sandbox log"})

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(411, "send a Content-Length\n", "text/plain")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, "bad or too large Content-Length\n", "text/plain")
            return None
        return self.rfile.read(length) if length else b""

    # --- the CaptchaAI API ---------------------------------------------------------------------

    def _api(self, endpoint: str, params: dict[str, str], files: dict[str, bytes]) -> None:
        srv = self.sandbox_server
        config = srv.sandbox.config
        as_json = params.get("json", "0").lower() in ("1", "true")
        srv.stopping.wait(srv.sandbox.round_trip_s())  # the provider's HTTP round trip (0 on loopback profiles)
        fault = srv.faults.decide(config, endpoint)
        if fault is not None:
            srv.sandbox.note_fault(fault)
            if fault == "slow":
                if srv.stopping.wait(config.slow_delay_s):
                    self._reset_connection()
                    return
            elif fault == "http_500":
                status = srv.faults.http_status()
                self.close_connection = True
                self._send(status, nginx_error_page(status), "text/html")
                return
            elif fault == "html_200":
                self._send(200, MAINTENANCE_PAGE, "text/html")
                return
            elif fault == "reset":
                self._reset_connection()
                return
            elif fault == "error_1001":
                self._send_reply(Reply.error(srv.faults.capacity_error()), as_json)
                return
            elif fault == "no_slot":
                self._send_reply(Reply.error("ERROR_NO_SLOT_AVAILABLE"), as_json)
                return
        reply = srv.sandbox.submit(params, files) if endpoint == "in.php" else srv.sandbox.result(params)
        self._send_reply(reply, as_json)

    def _send_reply(self, reply: Reply, as_json: bool) -> None:
        if as_json:
            self._send_json(200, {"status": reply.status, "request": reply.request})
        else:
            self._send(200, reply.text, "text/plain")

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), the way an overloaded balancer does."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()

    # --- admin ---------------------------------------------------------------------------------

    def _admin(self, name: str, body: bytes) -> None:
        srv = self.sandbox_server
        if name == "stats" and self.command == "GET":
            self._send_json(200, srv.sandbox.stats())
        elif name == "config" and self.command == "GET":
            self._send_json(200, srv.sandbox.config.to_dict())
        elif name == "payments" and self.command == "GET":
            self._send_json(200, srv.sandbox.accepted_per_page())
        elif name == "config" and self.command == "POST":
            try:
                data = json.loads(body or b"{}")
            except ValueError as exc:
                self._send_json(400, {"error": f"body is not JSON: {exc}"})
                return
            if not isinstance(data, dict):
                self._send_json(400, {"error": "body must be a JSON object of config fields"})
                return
            try:
                config = apply_update(srv.sandbox, srv.faults, data)
            except ConfigError as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, config.to_dict())
        elif name == "reset" and self.command == "POST":
            reset(srv.sandbox, srv.faults)
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": f"no admin endpoint {self.command} /admin/{name}"})

    # --- writing -------------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")), "application/json")

    def _send(self, status: int, text: str, content_type: str) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def parse_form(query: str, content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """Request parameters from the query string and a urlencoded or multipart body (the body wins).

    Returns text fields and, separately, every multipart part as bytes (``method=post`` reads ``file``).
    """
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    files: dict[str, bytes] = {}
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str):
                    continue
                raw = part.get_payload(decode=True)
                payload = raw if isinstance(raw, bytes) else b""
                files[name] = payload
                if part.get_filename() is None:
                    params[name] = payload.decode("utf-8", "replace")
    elif body:
        text = body.decode("utf-8", "replace")
        params.update({k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()})
    return params, files


def apply_update(sandbox: Sandbox, faults: FaultInjector, data: Mapping[str, Any]) -> SandboxConfig:
    """Change settings at runtime, reseeding the fault dice when ``seed`` changes."""
    config = sandbox.update(data)
    if "seed" in data:
        faults.reseed(config.seed)
    return config


def reset(sandbox: Sandbox, faults: FaultInjector) -> None:
    """Forget every captcha and counter; the fault dice restart from the seed."""
    sandbox.reset()
    faults.reseed(sandbox.config.seed)


class SandboxServer(StartStop):
    """A CaptchaAI-compatible service on a loopback port, served from a background thread.

    ``SandboxServer(SandboxConfig(time_scale=0.01)).start()`` binds (port 0 picks a free one) and returns
    the server; ``url`` is then the API base. ``stop()`` closes every connection and joins every thread.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.model = Sandbox(config or SandboxConfig(), clock=clock)
        self.faults = FaultInjector(self.model.config.seed)
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._httpd: _SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (known once ``start()`` has run; kept after ``stop()``)."""
        if self._port is None:
            raise RuntimeError("the sandbox is not started")
        return self._port

    @property
    def url(self) -> str:
        """The API base, e.g. ``http://127.0.0.1:PORT`` (append ``/in.php`` or ``/res.php``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> SandboxConfig:
        """The settings in effect now."""
        return self.model.config

    def start(self) -> SandboxServer:
        """Bind and serve in a daemon thread; returns self for chaining."""
        if self._httpd is not None:
            return self
        self._httpd = _SandboxHTTPServer((self.host, self._requested_port), self.model, self.faults)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox-http", daemon=True
        )
        self._thread.start()
        log.info("sandbox listening on %s", self.url)
        return self

    def stats(self) -> dict[str, Any]:
        """The same counters as ``GET /admin/stats``."""
        return self.model.stats()

    def payments(self) -> dict[str, int]:
        """Accepted (paid) submits per ``pageurl``, like ``GET /admin/payments``."""
        return self.model.accepted_per_page()

    def update(self, **fields: Any) -> SandboxConfig:
        """Change settings at runtime, like ``POST /admin/config``."""
        return apply_update(self.model, self.faults, fields)

    def reset(self) -> None:
        """Zero the counters and forget every captcha, like ``POST /admin/reset``."""
        reset(self.model, self.faults)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, end open connections (including stalled ``slow`` answers) and join the threads."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections(timeout_s)
        if thread is not None:
            thread.join(timeout_s)
        self._httpd = None
        self._thread = None
