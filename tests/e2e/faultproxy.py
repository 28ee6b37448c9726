"""A fault-injecting HTTPS reverse proxy in front of the real API server, for the e2e fault tests.

The operator is given a kubeconfig that points here. The proxy terminates TLS with its own CA and
certificate (and requires the client certificate it issued), forwards every request to the real API
server as the admin user, and streams responses through unchanged (watches included). On demand it
answers a fraction of the requests itself with 429 Too Many Requests (with Retry-After) or 500, the
way an overloaded or failing API server does, and it records every request so a test can measure the
request rate during a fault window.

Only the standard library and the control plane's own certificate helpers are used.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from devcluster.controlplane import _write, issue_certificate, new_ca, render_kubeconfig

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "content-length", "host"}


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic()
    method: str
    path: str  # without the query
    watch: bool
    status: int  # what the client got (the injected status, or the API server's)
    injected: bool
    client: str = ""  # "kopf" or "operator" (our own client), from the User-Agent
    selector: str = ""  # the labelSelector: two watches of one path are two streams


@dataclass
class Fault:
    status: int  # 429 or 500 (or any status the test wants)
    fraction: float = 1.0  # share of matching requests that fail
    retry_after: int | None = None  # seconds, sent as Retry-After (429)
    match: Callable[[str, str], bool] = lambda method, path: True
    #: Fail watches the way an API server in trouble sometimes does: 200, then an ERROR event in the
    #: stream (with `status` as its code). Other requests pass.
    watch_error: bool = False


class FaultProxy:
    def __init__(self, upstream: str, ca_cert: Path, client_cert: Path, client_key: Path, workdir: Path,
                 *, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self._upstream_host, self._upstream_port = parts.hostname or "127.0.0.1", parts.port or 443
        self._upstream_ctx = ssl.create_default_context(cafile=str(ca_cert))
        self._upstream_ctx.load_cert_chain(str(client_cert), str(client_key))
        self._workdir = workdir
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._streams: set[http.client.HTTPSConnection] = set()
        self.requests: list[Request] = []
        self.kubeconfig = workdir / "proxy.kubeconfig"
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._workdir.mkdir(parents=True, exist_ok=True)
        ca = new_ca("wso-fault-proxy-ca")
        serving = issue_certificate(ca, "fault-proxy", dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True)
        client = issue_certificate(ca, "operator-via-proxy", client=True)
        for name, data in (("ca.crt", ca.cert_pem()), ("tls.crt", serving.cert_pem()), ("tls.key", serving.key_pem())):
            _write(self._workdir / name, data, private=name.endswith(".key"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self._workdir / "tls.crt"), str(self._workdir / "tls.key"))
        context.load_verify_locations(str(self._workdir / "ca.crt"))
        context.verify_mode = ssl.CERT_REQUIRED  # only the client we issued a certificate to

        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # The handshake runs in the handler thread (first read), not in the accept loop.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True).start()
        url = f"https://127.0.0.1:{server.server_address[1]}"
        _write(self.kubeconfig, render_kubeconfig(url, ca.cert_pem(), client, user="operator-via-proxy").encode(), private=True)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self.cut_streams()
            self._server = None

    # --- faults ---------------------------------------------------------------------------------
    @contextmanager
    def failing(self, fault: Fault, *, cut_streams: bool = True) -> Iterator[None]:
        """Inject `fault` while the block runs. Open watch streams are cut at the start, so that the
        clients' reconnects meet the fault too (an API server under pressure drops them the same way)."""
        with self._lock:
            self._fault = fault
        if cut_streams:
            self.cut_streams()
        try:
            yield
        finally:
            with self._lock:
                self._fault = None

    def cut_streams(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for conn in streams:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def decide(self, method: str, path: str, watch: bool) -> Fault | None:
        with self._lock:
            fault = self._fault
            if fault is None or not fault.match(method, path) or (fault.watch_error and not watch):
                return None
            return fault if self._rng.random() < fault.fraction else None

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_between(self, start: float, end: float) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if start <= r.at < end]

    @staticmethod
    def breakdown(requests: list[Request]) -> str:
        """"GET secrets: 12, WATCH workspacesecrets: 3, ..." -- by verb and resource, for failure reports."""
        counts: dict[str, int] = {}
        for r in requests:
            parts = [p for p in r.path.split("/") if p]
            resource = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "namespaces" and i + 2 < len(parts)), parts[-1] if parts else "/")
            if "namespaces" in parts and parts.index("namespaces") + 2 < len(parts):
                resource = parts[parts.index("namespaces") + 2]
            sub = "/status" if r.path.endswith("/status") else ""
            key = f"{r.client} {'WATCH' if r.watch else r.method} {resource}{sub}"
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))

    # used by the handler
    def upstream(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self._upstream_host, self._upstream_port, context=self._upstream_ctx, timeout=600)

    def track(self, conn: http.client.HTTPSConnection, active: bool) -> None:
        with self._lock:
            (self._streams.add if active else self._streams.discard)(conn)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path, _, query = self.path.partition("?")
        watch = "watch=true" in query or "watch=1" in query
        client = "kopf" if "kopf" in (self.headers.get("User-Agent") or "").lower() else "operator"
        selector = parse_qs(query).get("labelSelector", [""])[0]
        fault = self.owner.decide(self.command, path, watch)
        if fault is not None:
            self._inject(fault)
            self.owner.record(Request(time.monotonic(), self.command, path, watch, fault.status, True, client, selector))
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "authorization"}
        conn = self.owner.upstream()
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
        except OSError:
            conn.close()
            self._inject(Fault(502))
            self.owner.record(Request(time.monotonic(), self.command, path, watch, 502, True, client, selector))
            return
        self.owner.record(Request(time.monotonic(), self.command, path, watch, response.status, False, client, selector))
        self.owner.track(conn, True)
        try:
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := response.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # cut (or the client went away): end this connection
        finally:
            self.owner.track(conn, False)
            conn.close()

    def _inject(self, fault: Fault) -> None:
        reason = {429: "TooManyRequests", 500: "InternalError"}.get(fault.status, "ServiceUnavailable")
        payload = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": fault.status, "reason": reason,
                   "message": f"injected by the e2e fault proxy ({fault.status})"}
        if fault.retry_after is not None:
            payload["details"] = {"retryAfterSeconds": fault.retry_after}
        if fault.watch_error:
            data = json.dumps({"type": "ERROR", "object": payload}).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        data = json.dumps(payload).encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if fault.retry_after is not None:
            self.send_header("Retry-After", str(fault.retry_after))
        self.end_headers()
        self.wfile.write(data)
