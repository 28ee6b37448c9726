"""A tiny forwarding HTTP proxy for fault injection between the operator and a provider server.

`outage = True` answers 503 without forwarding (a provider outage); `on_request(method, path, body)` may
return a callback run after the upstream answered and before the client gets the answer (used to SIGKILL
the operator between "minted at the provider" and "recorded in the Secret").
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Hook = Callable[[str, str, bytes], Callable[[], None] | None]


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.outage = False
        self.on_request: Hook | None = None
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep request lines (which may carry ids) out of test output
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.requests += 1
                if proxy.outage:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                after = proxy.on_request(self.command, self.path, body) if proxy.on_request else None
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                # Host is kept as sent: it is part of what AWS SigV4 signs.
                headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                if after is not None:
                    after()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
