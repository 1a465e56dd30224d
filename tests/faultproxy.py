"""A loopback HTTP proxy that breaks a share of the requests passing through it, for tests.

It sits between a storage client and Azurite on 127.0.0.1 and reads each request whole. The
requests it may touch (`Faults.only`) are delayed (`Faults.delay`, a slow link) and a share of
them (`Faults.rate`) is broken in one of three ways:

- "503": answered 503 ServerBusy without reaching the server (Azure's throttling answer);
- "drop": forwarded, then the connection is closed before the answer (the write happened, the
  client cannot know: retries must be idempotent);
- "reset": the connection is reset (RST) before anything is forwarded;
- "stall" (only when asked for): no answer for `Faults.stall` seconds, then the connection is
  closed (the client's read timeout must fire first);
- "corrupt" (only when asked for): one byte of the body flipped on the way, the request's if it
  has one (the server must refuse it by its Content-MD5), else the answer's (the client must
  notice by the range's Content-MD5).

A link speed (`Faults.link_rate`, bytes per second, each direction) makes it a slow network
link shared by all connections: each message takes its size / rate on the link, one after
the other, as on a real link (for benchmarks).

Deterministic: whether and how a request is broken is a seeded hash of the request (method,
path and query, byte range) and of how many times that request was seen, never of thread
timing. Bounded: a request is broken at most `max_faults` times (so bounded retries get
through unless `max_faults` says otherwise), at most `max_connections` connections are
served at once, and the proxy stops itself after `lifetime` seconds.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("503", "drop", "reset")
BUSY_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>Injected by the test proxy: the server is busy.</Message></Error>"
)


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query
    headers: dict[str, str]  # lower-case names
    raw: bytes  # request line, headers and body, as received

    @property
    def body_length(self) -> int:
        return int(self.headers.get("content-length", "0"))

    @property
    def is_put_page(self) -> bool:
        return self.method == "PUT" and "comp=page" in self.target and self.headers.get("x-ms-page-write") == "update"

    @property
    def body(self) -> bytes:
        return self.raw[len(self.raw) - self.body_length:] if self.body_length else b""

    @property
    def key(self) -> str:
        return f"{self.method} {self.target} {self.headers.get('x-ms-range') or self.headers.get('range', '')}"


def any_request(request: Request) -> bool:
    return True


@dataclass(frozen=True)
class Faults:
    rate: float = 0.0  # share of the eligible requests broken
    kinds: tuple[str, ...] = KINDS
    max_faults: int = 2  # times one request may be broken
    delay: float = 0.0  # seconds of extra latency per eligible request
    stall: float = 2.0  # how long a "stall" fault holds the connection silent
    only: Callable[[Request], bool] = any_request  # which requests are eligible
    seed: int = 1
    link_rate: float = 0.0  # bytes per second each way on the shared link; 0: no limit


@dataclass
class Stats:
    requests: int = 0
    faults: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    put_page_bytes: int = 0  # page data of Put Page requests the server answered


class Link:
    """One direction of a link of `rate` bytes per second shared by every connection: a message
    waits for the link to be free, then for its own transmission time."""

    def __init__(self, rate: float):
        self.rate = rate
        self.free_at = 0.0
        self.lock = threading.Lock()

    def carry(self, size: int) -> None:
        if not self.rate:
            return
        with self.lock:
            done = max(time.monotonic(), self.free_at) + size / self.rate
            self.free_at = done
        time.sleep(max(0.0, done - time.monotonic()))


class _Closed(Exception):
    """The peer closed the connection."""


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes, start: int = 0) -> int:
    """Read until `marker` appears in `buf` at or after `start`; the offset just past it."""
    while (found := buf.find(marker, start)) < 0:
        data = sock.recv(65536)
        if not data:
            raise _Closed
        buf += data
    return found + len(marker)


def _read_exact(sock: socket.socket, buf: bytearray, length: int) -> None:
    while len(buf) < length:
        data = sock.recv(max(65536, length - len(buf)))
        if not data:
            raise _Closed
        buf += data


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def read_message(sock: socket.socket, buf: bytearray, *, response_to: str | None = None) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 message from `sock` (leftover bytes stay in `buf`): first line, headers,
    the raw bytes. Bodies by Content-Length or chunked; none for HEAD answers, 204 and 304."""
    end = _read_until(sock, buf, b"\r\n\r\n")
    first, headers = _parse_head(bytes(buf[:end]))
    status = first.split(" ", 2)[1] if response_to else ""
    if response_to == "HEAD" or status in ("204", "304"):
        length = end
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        length = end
        while True:
            line_end = _read_until(sock, buf, b"\r\n", length)
            size = int(bytes(buf[length:line_end - 2]).split(b";")[0], 16)
            length = line_end + size + 2
            _read_exact(sock, buf, length)
            if size == 0:
                break
    else:
        length = end + int(headers.get("content-length", "0"))
        _read_exact(sock, buf, length)
    raw = bytes(buf[:length])
    del buf[:length]
    return first, headers, raw


class FaultProxy:
    """`with FaultProxy(upstream_port, Faults(...)) as proxy:` then talk to `proxy.port`."""

    def __init__(self, upstream_port: int, faults: Faults = Faults(), *, lifetime: float = 120.0,
                 max_connections: int = 64):
        self.upstream_port, self.faults = upstream_port, faults
        self.stats = Stats()
        self.up, self.down = Link(faults.link_rate), Link(faults.link_rate)
        self._lock = threading.Lock()
        self._seen: Counter = Counter()
        self._broken: Counter = Counter()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sockets: set[socket.socket] = set()
        self._busy = 0  # requests being delayed, broken or forwarded
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._deadline = threading.Timer(lifetime, self.stop)
        self._deadline.daemon = True

    def endpoint(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._accept, name="faultproxy-accept", daemon=True).start()
        self._deadline.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self._deadline.cancel()
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading it
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._slots.acquire()
            threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True).start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _untrack(self, sock: socket.socket) -> None:
        _close(sock)
        with self._lock:
            self._sockets.discard(sock)

    def _decide(self, request: Request) -> str | None:
        """The fault for this (eligible) request: from the seed, the request and how many
        times it was seen."""
        f = self.faults
        with self._lock:
            n = self._seen[request.key]
            self._seen[request.key] += 1
            if self._broken[request.key] >= f.max_faults:
                return None
            digest = hashlib.sha256(f"{f.seed}|{request.key}|{n}".encode()).digest()
            draw = struct.unpack(">Q", digest[:8])[0] / 2**64
            if draw >= f.rate:
                return None
            kind = f.kinds[digest[8] % len(f.kinds)]
            self._broken[request.key] += 1
            self.stats.faults[kind] += 1
        return kind

    def _exchange(self, upstream: socket.socket, buf: bytearray, request: Request) -> tuple[str, bytes]:
        self.up.carry(len(request.raw))
        upstream.sendall(request.raw)
        status_line, _, answer = read_message(upstream, buf, response_to=request.method)
        self.down.carry(len(answer))
        return status_line, answer

    def _forward(self, upstream: socket.socket | None, buf: bytearray,
                 request: Request) -> tuple[socket.socket, tuple[str, bytes]]:
        """Send the request to the server and read its answer; on a fresh connection if the
        kept-alive one was closed by the server meanwhile (that is not a fault of ours)."""
        if upstream is not None:
            try:
                return upstream, self._exchange(upstream, buf, request)
            except (_Closed, ConnectionError):
                self._untrack(upstream)
                buf.clear()
        upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream_port)))
        return upstream, self._exchange(upstream, buf, request)

    def _handle(self, client: socket.socket, upstream: socket.socket | None, buf: bytearray,
                request: Request) -> tuple[socket.socket | None, bytes | None]:
        """Delay, break or forward one request: (upstream connection, the answer to send back,
        None when the client connection must be closed instead)."""
        fault = None
        if self.faults.only(request):
            time.sleep(self.faults.delay)
            fault = self._decide(request)
        if fault == "stall":
            self._stopped.wait(self.faults.stall)
            return upstream, None
        if fault == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return upstream, None
        if fault == "503":
            return upstream, busy_answer(request.method)
        if fault == "corrupt" and request.body_length:
            request = Request(request.method, request.target, request.headers, flip_last(request.raw))
        upstream, (status_line, answer) = self._forward(upstream, buf, request)
        if fault == "corrupt" and not request.body_length and body_length(answer):
            answer = flip_last(answer)
        if request.is_put_page and status_line.split(" ")[1] == "201":
            with self._lock:
                self.stats.put_page_bytes += request.body_length
        return upstream, None if fault == "drop" else answer

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being delayed or forwarded (the server has answered every
        request that reached it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return
            time.sleep(0.01)
        raise TimeoutError("the proxy is still forwarding requests")

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        inbuf, upbuf = bytearray(), bytearray()
        try:
            self._track(client)
            while not self._stopped.is_set():
                first, headers, raw = read_message(client, inbuf)
                method, target = first.split(" ")[:2]
                request = Request(method, target, headers, raw)
                with self._lock:
                    self.stats.requests += 1
                    self.stats.methods[method] += 1
                    self._busy += 1
                try:
                    upstream, answer = self._handle(client, upstream, upbuf, request)
                finally:
                    with self._lock:
                        self._busy -= 1
                if answer is None:
                    return
                client.sendall(answer)
        except (_Closed, OSError, ValueError, IndexError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._untrack(sock)
            self._slots.release()


def busy_answer(method: str) -> bytes:
    """503 ServerBusy as Azure words it (no body in the answer to a HEAD)."""
    head = (b"HTTP/1.1 503 Server Busy\r\nContent-Type: application/xml\r\nx-ms-error-code: ServerBusy\r\n"
            + f"Content-Length: {len(BUSY_BODY)}\r\n\r\n".encode())
    return head if method == "HEAD" else head + BUSY_BODY


def flip_last(message: bytes) -> bytes:
    """`message` with the last byte of its body inverted (its framing unchanged)."""
    return message[:-1] + bytes([message[-1] ^ 0xFF])


def body_length(answer: bytes) -> int:
    """The Content-Length body size of an answer (0 when chunked or empty)."""
    _, headers = _parse_head(answer[: answer.find(b"\r\n\r\n")])
    return 0 if "transfer-encoding" in headers else int(headers.get("content-length", "0"))


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
