"""A fault-injecting HTTP proxy in front of a real STAC API, for the STAC stage's tests.

Requests are forwarded to the upstream API unchanged (the ``Host`` header included, so
the links the API writes point back at the proxy). Faults are queued per path prefix
and used up in order, one per matching request:

- ``("status", 500)``: answer 500 without asking upstream;
- ``("status", 429, retry_after_s)``: answer 429 with ``Retry-After``;
- ``("stall", seconds)``: accept the request, send nothing for ``seconds``, then forward;
- ``("empty",)``: answer an empty FeatureCollection.

``hide_conformance`` (substrings) removes matching conformance classes from the landing
page and ``/conformance``, to play an API without an extension. The proxy records every
request it received (method, path, time) in ``requests``.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import deque

import requests


class FaultProxy:
    """Proxy on a free 127.0.0.1 port; ``url`` is its base URL.

    Parameters
    ----------
    upstream : str
        Base URL of the real API.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.faults: dict[str, deque] = {}
        self.requests: list[tuple[str, str, float]] = []
        self.hide_conformance: tuple[str, ...] = ()
        self.lock = threading.Lock()
        self.session = requests.Session()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.handle(self, "GET")

            def do_POST(self):
                proxy.handle(self, "POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def inject(self, path_prefix: str, *faults: tuple) -> None:
        """Queue ``faults`` for the next requests whose path starts with ``path_prefix``."""
        with self.lock:
            self.faults.setdefault(path_prefix, deque()).extend(faults)

    def count(self, path_prefix: str) -> int:
        """Requests received so far whose path starts with ``path_prefix``."""
        return sum(1 for _, path, _ in self.requests if path.startswith(path_prefix))

    def _next_fault(self, path: str):
        with self.lock:
            for prefix, queue in self.faults.items():
                if path.startswith(prefix) and queue:
                    return queue.popleft()
        return None

    def _send(self, handler, status: int, body: bytes, headers: dict | None = None) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def handle(self, handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        with self.lock:
            self.requests.append((method, handler.path, time.monotonic()))
        fault = self._next_fault(handler.path)
        try:
            if fault and fault[0] == "status":
                headers = {"Content-Type": "application/json"}
                if len(fault) > 2:
                    headers["Retry-After"] = str(fault[2])
                return self._send(handler, fault[1], json.dumps({"detail": "injected"}).encode(), headers)
            if fault and fault[0] == "empty":
                empty = {"type": "FeatureCollection", "features": [], "links": []}
                return self._send(handler, 200, json.dumps(empty).encode(), {"Content-Type": "application/geo+json"})
            if fault and fault[0] == "stall":
                time.sleep(fault[1])
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("content-length", "accept-encoding")}
            answer = self.session.request(method, self.upstream + handler.path, data=body, headers=headers, timeout=60)
            keep = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection")}
            content = answer.content
            if self.hide_conformance and handler.path.split("?")[0] in ("/", "/conformance"):
                doc = answer.json()
                doc["conformsTo"] = [c for c in doc.get("conformsTo", [])
                                     if not any(h in c for h in self.hide_conformance)]
                content = json.dumps(doc).encode()
            self._send(handler, answer.status_code, content, keep)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (read timeout): nothing to answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.session.close()
