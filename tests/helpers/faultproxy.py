"""An HTTP proxy in front of a test registry that injects faults on matching requests, over a real
socket: answer 500/429 without forwarding, drop the connection, cut a response body short, flip a
byte of a response body, forward a request but lose its answer ("lost": the registry acted, the
client cannot know), or hold requests at a barrier until `parties` of them are in flight at once
(proves a client transfers in parallel; a barrier that times out answers 504), or "hold" them,
never forwarded, until `release()` or `timeout` (then 504), `wait_hits(n)` telling when n arrived.
Hostile answers, also
without forwarding: "redirect" (307 to `location`, `{path}` replaced by the request's path),
"answer" (`status`, `headers` and `body` as given), "flood" (200 with an endless body, chunked, or
with `flood_length` claimed as Content-Length), "resize" (forward, then send `size_delta` more or
fewer body bytes than the registry did, with a matching Content-Length).

    with FaultProxy(reg.host) as proxy:
        proxy.add(Fault("status", path=r"/blobs/sha256:", times=2, status=500))
        ref = f"http://{proxy.host}/app:v1"     # the registry builds Location URLs from our Host

Requests are forwarded with their Host header, so the registry's upload URLs point back at the proxy.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "upgrade",
}


@dataclass
class Fault:
    kind: Literal[
        "status",
        "drop",
        "lost",
        "truncate",
        "corrupt",
        "barrier",
        "hold",
        "redirect",
        "answer",
        "flood",
        "resize",
    ]
    path: str = ""  # regex searched in the request path (with query)
    method: str | None = None
    times: int = 1  # matching requests affected; -1: all of them
    status: int = 500
    retry_after: str | None = None
    parties: int = 2  # for "barrier"
    timeout: float = 20.0  # for "barrier" and "hold"
    location: str = ""  # for "redirect"
    headers: dict[str, str] = field(default_factory=dict)  # for "answer"
    body: bytes = b""  # for "answer"
    flood_length: int | None = None  # for "flood": the Content-Length claimed (None: chunked, endless)
    size_delta: int = 0  # for "resize"
    hits: int = 0
    passed: bool = False  # a barrier that released its parties
    _barrier: threading.Barrier | None = None
    _arrived: threading.Condition = field(default_factory=threading.Condition)
    _released: threading.Event = field(default_factory=threading.Event)

    def wait_hits(self, n: int, timeout: float = 20.0) -> bool:
        """Block until `n` requests matched this fault; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.hits >= n, timeout)

    def release(self) -> None:
        """Let held requests go (answered 504, still not forwarded)."""
        self._released.set()

    def hold(self) -> None:
        self._released.wait(self.timeout)

    def wait(self) -> bool:
        """Barrier faults: block until `parties` requests wait here; False if that never happened."""
        assert self._barrier is not None
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            return False
        self.passed = True
        return True

    def matches(self, method: str, path: str) -> bool:
        if self.times != -1 and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and re.search(self.path, path) is not None


@dataclass
class Hit:
    method: str
    path: str
    status: int  # what the client got (0: dropped)
    fault: str | None
    headers: dict[str, str] = field(default_factory=dict)  # the request's, names in lower case


@dataclass
class FaultProxy:
    upstream: str  # host:port of the registry (plain HTTP)
    faults: list[Fault] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    ignore_range: bool = False  # forward without Range headers: a server that always sends it all
    bind: str = "127.0.0.1"  # another loopback address (127.0.0.2) makes the proxy "another host"
    arrivals: int = 0  # requests that reached the proxy, counted as they arrive (hits: as answered)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"{self.bind}:{self._server.server_address[1]}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.hits.clear()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(method, path):
                    with f._arrived:
                        f.hits += 1
                        f._arrived.notify_all()
                    if f.kind == "barrier" and f._barrier is None:
                        f._barrier = threading.Barrier(f.parties, timeout=f.timeout)
                    return f
        return None

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        proxy = self
        host, port = self.upstream.rsplit(":", 1)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _hit(self, status: int, fault: str | None) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                proxy._record(Hit(self.command, self.path, status, fault, headers))

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _flood(self, length: int | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                if length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                block = b"{" * 65536
                chunk = b"%x\r\n%s\r\n" % (len(block), block) if length is None else block
                sent = 0
                try:
                    while length is None or sent < length:
                        self.wfile.write(chunk)
                        sent += len(block)
                except OSError:
                    pass  # the client hung up: what a size cap does
                self.close_connection = True

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def _handle(self) -> None:
                method, path = self.command, self.path
                with proxy._lock:
                    proxy.arrivals += 1
                body = self._body()
                fault = proxy._take(method, path)
                if fault and fault.kind == "hold":
                    fault.hold()
                    fault = Fault("status", status=504)
                if fault and fault.kind == "drop":
                    self._hit(0, "drop")
                    self._drop()
                    return
                if fault and fault.kind == "redirect":
                    self._hit(307, "redirect")
                    self._send(307, {"Location": fault.location.replace("{path}", path)}, b"")
                    return
                if fault and fault.kind == "answer":
                    self._hit(fault.status, "answer")
                    self._send(fault.status, fault.headers, fault.body)
                    return
                if fault and fault.kind == "flood":
                    self._hit(200, "flood")
                    self._flood(fault.flood_length)
                    return
                if fault and fault.kind == "barrier" and not fault.wait():
                    fault = Fault("status", status=504)
                if fault and fault.kind == "status":
                    self._hit(fault.status, "status")
                    data = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
                    self.send_response(fault.status)
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    dropped = HOP_BY_HOP | ({"range"} if proxy.ignore_range else set())
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                    send = body if body or method in ("PUT", "POST", "PATCH") else None
                    conn.request(method, path, body=send, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, resp_headers = resp.status, resp.getheaders()
                finally:
                    conn.close()
                length = resp.getheader("Content-Length") if method == "HEAD" else str(len(data))
                if fault and fault.kind == "lost":
                    self._hit(0, "lost")
                    self._drop()
                    return
                if fault and fault.kind == "corrupt" and data:
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                if fault and fault.kind == "resize" and data:
                    delta = fault.size_delta
                    data = data + b"x" * delta if delta > 0 else data[:delta]
                    length = str(len(data))
                self._hit(status, fault.kind if fault else None)
                self.send_response(status)
                for k, v in resp_headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                if method == "HEAD":
                    return
                if fault and fault.kind == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._drop()
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer((self.bind, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()

    def stop(self) -> None:
        for f in self.faults:
            f.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
