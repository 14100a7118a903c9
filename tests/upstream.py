"""Test-side upstream servers for pinproxy end-to-end tests (their PKI is ``tests/certs.py``).

Everything here is deliberately independent of the ``pinproxy`` package.

The servers record every application byte they receive.  The central claim of
pinproxy is "a connection that violates a pin never carries application data
upstream", and that is only provable from the upstream's side.

Counter semantics (measured with OpenSSL 3.0 via the stdlib ``ssl`` module,
see ``tests/test_upstream.py``):

* ``connections_accepted`` -- TCP ``accept()`` calls that returned.
* ``handshakes_completed`` -- server-side ``do_handshake()`` returned
  successfully.  For TLS 1.2 *and* TLS 1.3 this only happens after the server
  has read the client's Finished message, which a client sends only after it
  accepted the server certificate.  A client that rejects the certificate
  (verify callback failure, pin failure inside the handshake) therefore counts
  as a *failed* handshake, never as a completed one, in both versions.
  A client that finishes the handshake and only then decides to hang up
  (a "post-handshake" pin check) *does* count here -- the difference is
  exactly what this counter is for.  One asymmetry: in TLS 1.3 the *client*
  is done once it has sent Finished, the server only once it has read it.
  A client that completes and immediately resets (SO_LINGER 0) usually gets
  its Finished discarded by the server's kernel: the server then records a
  failed handshake (``ConnectionResetError``), not a completed one.  In
  TLS 1.2 the server's Finished is the last message, so this cannot happen.
* ``handshakes_failed`` / ``handshake_errors`` -- ``do_handshake()`` raised;
  the error string is OpenSSL's reason, e.g. ``TLSV1_ALERT_UNKNOWN_CA``.
* ``received_bytes()`` -- decrypted application data from all connections.
  Empty means no request, no WebSocket frame, nothing, reached the upstream.
* ``connections_closed`` -- connections whose handler has finished and whose
  socket is closed.  Wait on this before asserting "nothing was received", so
  the assertion is not racing the server thread.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import select
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, Self

import h2.config
import h2.connection
import h2.events
import h11
import trustme
import wsproto
import wsproto.events
import wsproto.utilities
from wsproto.connection import ConnectionState

log = logging.getLogger(__name__)

UpstreamProtocol = Literal["http1", "h2", "websocket", "raw"]

# ---------------------------------------------------------------------------
# The chain a server presents (the PKI itself is in tests/certs.py)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerChain:
    """A private key plus the exact certificates a server sends, leaf first.

    Unlike a ``trustme.LeafCert`` the chain can be arbitrary, e.g. a rogue leaf
    followed by a genuine (but unrelated) intermediate.
    """

    key_pem: bytes
    cert_pems: tuple[bytes, ...]

    @classmethod
    def from_leaf(cls, leaf: trustme.LeafCert, extra: Iterable[bytes] = ()) -> ServerChain:
        """The leaf's own chain (leaf + issuing intermediates), plus ``extra`` appended."""
        certs = tuple(b.bytes() for b in leaf.cert_chain_pems) + tuple(extra)
        return cls(leaf.private_key_pem.bytes(), certs)

    @property
    def leaf_pem(self) -> bytes:
        return self.cert_pems[0]


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


def wait_for[T](predicate: Callable[[], T | None], timeout: float = 5.0,
                interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises ``TimeoutError`` otherwise (servers run in threads, so test
    assertions about them need a grace period).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


@dataclass(frozen=True)
class Request:
    """One HTTP request (or WebSocket upgrade request) as the upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names, no HTTP/2 pseudo-headers
    authority: str | None  # Host header (HTTP/1.1) or :authority (HTTP/2)
    http_version: str  # "1.1" or "2"
    body: bytes = b""


@dataclass(frozen=True)
class TlsSession:
    """What a completed server-side handshake negotiated."""

    sni: str | None
    alpn: str | None
    version: str | None  # e.g. "TLSv1.3"


def _headers_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


class _Stream(Protocol):
    """What the protocol handlers need: a plain socket or a :class:`_TlsStream`."""

    def recv(self, bufsize: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...


class _TlsStream:
    """Server-side TLS over memory BIOs on a socket we keep owning.

    ``SSLContext.wrap_socket`` detaches the socket, may raise *after* taking
    its fd (when the peer reset before the wrap), and then leaks the fd as a
    ResourceWarning; a socket-level shutdown from ``stop()`` would also race
    the SSL object.  With memory BIOs none of that applies.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)

    def _flush(self) -> None:
        if data := self._out.read():
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    self._flush()  # deliver our alert, as a real server would
                raise
        self._flush()  # our Finished (TLS 1.2) / session tickets (TLS 1.3)

    def recv(self, bufsize: int, /) -> bytes:
        """Decrypted bytes; b"" on close_notify or (ragged) EOF."""
        while True:
            try:
                return self.obj.read(bufsize)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def sendall(self, data: bytes, /) -> None:
        self.obj.write(data)
        self._flush()


def _remember_sni(conn: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
    """SNI callback: a server-side SSLObject doesn't expose the client's SNI, so stash it."""
    conn._upstream_sni = name  # type: ignore[attr-defined]


class _RecordingServer:
    """Accept loop + per-connection threads + thread-safe recording.

    Subclasses implement ``_serve(conn)``; they must read only via
    ``self._recv`` so every received byte is recorded.
    """

    def __init__(self, name: str, *, io_timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.io_timeout = io_timeout
        self.port = 0
        self._lock = threading.Lock()
        self._received: list[bytes] = []
        self._requests: list[Request] = []
        self._accepted = 0
        self._closed = 0
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._conn_threads: list[threading.Thread] = []
        self._active: dict[int, socket.socket] = {}
        self._next_id = 0

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"upstream-{self.name}-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut live connections (socket shutdown wakes blocked reads), join."""
        if self._accept_thread is None:
            return
        self._stopping.set()
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        self._accept_thread.join(timeout)
        with self._lock:
            for sock in self._active.values():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._conn_threads)
        for t in threads:
            t.join(timeout)
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._accept_thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- recorded state -----------------------------------------------------

    def received_bytes(self) -> bytes:
        """All application bytes received, from all connections, in arrival order."""
        with self._lock:
            return b"".join(self._received)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def connections_closed(self) -> int:
        with self._lock:
            return self._closed

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"

    _scheme = "http"

    # -- internals ------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._wake_r in readable:
                break
            try:
                sock, _ = self._listener.accept()
            except OSError:
                log.debug("accept failed", exc_info=True)
                continue
            sock.settimeout(self.io_timeout)
            with self._lock:
                self._accepted += 1
                conn_id = self._next_id
                self._next_id += 1
                self._active[conn_id] = sock
                self._conn_threads = [t for t in self._conn_threads if t.is_alive()]
                thread = threading.Thread(
                    target=self._run_conn,
                    args=(conn_id, sock),
                    name=f"upstream-{self.name}-conn{conn_id}",
                    daemon=True,
                )
                self._conn_threads.append(thread)
            thread.start()

    def _run_conn(self, conn_id: int, sock: socket.socket) -> None:
        try:
            stream = self._open(sock)
            if stream is not None:
                self._serve(stream)
        except Exception:  # misbehaving clients are expected in these tests
            log.debug("%s: connection %d ended with an error", self.name, conn_id, exc_info=True)
        finally:
            with self._lock:  # under the lock, so stop() never shuts down a recycled fd
                self._active.pop(conn_id, None)
                sock.close()
                self._closed += 1

    def _open(self, sock: socket.socket) -> _Stream | None:
        """Hook for TLS: the stream to talk through, or None to drop the connection."""
        return sock

    def _recv(self, conn: _Stream) -> bytes:
        data = conn.recv(65536)
        if data:
            with self._lock:
                self._received.append(data)
        return data

    def _record_request(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _serve(self, conn: _Stream) -> None:
        raise NotImplementedError

    # -- protocol handlers shared by the TLS and plaintext servers ------------

    def _response_body(self) -> bytes:
        return f"hello from upstream {self.name}\n".encode()

    def _serve_http1(self, conn: _Stream, initial: bytes = b"") -> None:
        """HTTP/1.1 with keep-alive: 200 + fixed body to every request."""
        h = h11.Connection(h11.SERVER)
        if initial:  # (b"" would mean EOF to h11)
            h.receive_data(initial)
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                log.debug("%s: not HTTP/1.1", self.name, exc_info=True)
                return
            if event is h11.NEED_DATA:
                h.receive_data(self._recv(conn))
            elif isinstance(event, h11.Request):
                request, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = _headers_dict((k.decode(), v.decode()) for k, v in request.headers)
                self._record_request(
                    Request(
                        method=request.method.decode(),
                        path=request.target.decode(),
                        headers=headers,
                        authority=headers.get("host"),
                        http_version="1.1",
                        body=bytes(body),
                    )
                )
                payload = self._response_body()
                out = h.send(
                    h11.Response(
                        status_code=200,
                        headers=[
                            ("content-type", "text/plain"),
                            ("content-length", str(len(payload))),
                            ("x-upstream", self.name),
                        ],
                    )
                )
                if request.method != b"HEAD":
                    out += h.send(h11.Data(data=payload))
                out += h.send(h11.EndOfMessage())
                conn.sendall(out)
                if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                    return  # "Connection: close" or similar
                h.start_next_cycle()
            else:  # ConnectionClosed, PAUSED
                return


class PlainServer(_RecordingServer):
    """Plaintext TCP server answering HTTP/1.1 200 to anything that parses as HTTP.

    Used to prove that plaintext traffic for a pinned host never reaches it.
    """

    def __init__(
        self, name: str = "plain", *, io_timeout: float = 10.0, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(name, io_timeout=io_timeout, host=host)

    def _serve(self, conn: _Stream) -> None:
        self._serve_http1(conn)


class UpstreamServer(_RecordingServer):
    """A TLS server on 127.0.0.1 that presents a given chain and speaks ``protocol``.

    ``protocol``:
      * ``"http1"``: HTTP/1.1 keep-alive, 200 + ``hello from upstream <name>``
        + ``X-Upstream: <name>``; ALPN ``http/1.1``.
      * ``"h2"``: same over HTTP/2; ALPN offers ``h2`` then ``http/1.1`` and
        falls back to HTTP/1.1 (also when the client sends no ALPN and no
        HTTP/2 preface).
      * ``"websocket"``: HTTP/1.1 upgrade; echoes messages prefixed "echo: ".
      * ``"raw"``: no ALPN; echoes every received chunk prefixed ``b"echo:"``.

    ``tls_version`` pins both the minimum and maximum protocol version.
    """

    _scheme = "https"

    def __init__(
        self,
        cert: trustme.LeafCert | ServerChain,
        protocol: UpstreamProtocol = "http1",
        name: str = "upstream",
        *,
        tls_version: ssl.TLSVersion | None = None,
        io_timeout: float = 10.0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(name, io_timeout=io_timeout, host=host)
        self.chain = cert if isinstance(cert, ServerChain) else ServerChain.from_leaf(cert)
        self.protocol = protocol
        self.tls_version = tls_version
        self._handshakes_ok: list[TlsSession] = []
        self._handshake_errors: list[str] = []
        self._messages: list[str | bytes] = []
        self._ctx = self._make_context()

    @property
    def handshakes_completed(self) -> int:
        with self._lock:
            return len(self._handshakes_ok)

    @property
    def handshakes_failed(self) -> int:
        with self._lock:
            return len(self._handshake_errors)

    @property
    def handshake_errors(self) -> list[str]:
        """OpenSSL reason per failed handshake, e.g. ``"TLSV1_ALERT_UNKNOWN_CA"``."""
        with self._lock:
            return list(self._handshake_errors)

    @property
    def tls_sessions(self) -> list[TlsSession]:
        """SNI / ALPN / version of each completed handshake."""
        with self._lock:
            return list(self._handshakes_ok)

    @property
    def messages(self) -> list[str | bytes]:
        """WebSocket messages received (the raw bytes are masked, so record them decoded)."""
        with self._lock:
            return list(self._messages)

    def _make_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if self.tls_version is not None:
            ctx.minimum_version = ctx.maximum_version = self.tls_version
        alpn = {"h2": ["h2", "http/1.1"], "http1": ["http/1.1"], "websocket": ["http/1.1"]}
        if self.protocol in alpn:
            ctx.set_alpn_protocols(alpn[self.protocol])
        with tempfile.TemporaryDirectory(prefix="pinproxy-upstream-") as d:
            path = pathlib.Path(d) / "chain.pem"
            path.write_bytes(self.chain.key_pem + b"".join(self.chain.cert_pems))
            # OpenSSL sends the extra certificates exactly as listed, without
            # rebuilding the chain -- which is what lets us build attack chains.
            ctx.load_cert_chain(str(path))
        ctx.sni_callback = _remember_sni
        return ctx

    def _open(self, sock: socket.socket) -> _Stream | None:
        tls = _TlsStream(sock, self._ctx)
        try:
            tls.handshake()
        except OSError as e:  # ssl.SSLError is an OSError; so are resets and timeouts
            reason = getattr(e, "reason", None) or type(e).__name__
            log.debug("%s: handshake failed: %s", self.name, e)
            with self._lock:
                self._handshake_errors.append(reason)
            return None
        session = TlsSession(
            sni=getattr(tls.obj, "_upstream_sni", None),
            alpn=tls.obj.selected_alpn_protocol(),
            version=tls.obj.version(),
        )
        with self._lock:
            self._handshakes_ok.append(session)
        return tls

    def _serve(self, conn: _Stream) -> None:
        assert isinstance(conn, _TlsStream)
        alpn = conn.obj.selected_alpn_protocol()
        if self.protocol == "raw":
            self._serve_raw(conn)
        elif self.protocol == "websocket":
            self._serve_websocket(conn)
        elif self.protocol == "h2" and alpn == "h2":
            self._serve_h2(conn)
        elif self.protocol == "h2" and alpn is None:
            first = self._recv(conn)  # no ALPN: sniff for the HTTP/2 connection preface
            if first.startswith(b"PRI "):
                self._serve_h2(conn, first)
            else:
                self._serve_http1(conn, first)
        else:
            self._serve_http1(conn)

    def _serve_raw(self, conn: _Stream) -> None:
        while data := self._recv(conn):
            conn.sendall(b"echo:" + data)

    def _serve_h2(self, conn: _Stream, initial: bytes = b"") -> None:
        h = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        h.initiate_connection()
        conn.sendall(h.data_to_send())
        pending: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        data = initial or self._recv(conn)
        while data:
            for event in h.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    pending[event.stream_id] = (list(event.headers), bytearray())  # type: ignore[arg-type]
                elif isinstance(event, h2.events.DataReceived) and event.stream_id in pending:
                    pending[event.stream_id][1].extend(event.data or b"")
                    h.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in pending:
                    self._h2_respond(h, event.stream_id, *pending.pop(event.stream_id))
                elif isinstance(event, h2.events.StreamReset):
                    pending.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    conn.sendall(h.data_to_send())
                    return
            conn.sendall(h.data_to_send())
            data = self._recv(conn)

    def _h2_respond(
        self,
        h: h2.connection.H2Connection,
        stream_id: int,
        raw_headers: list[tuple[str, str]],
        body: bytearray,
    ) -> None:
        pseudo = {k: v for k, v in raw_headers if k.startswith(":")}
        self._record_request(
            Request(
                method=pseudo.get(":method", ""),
                path=pseudo.get(":path", ""),
                headers=_headers_dict((k, v) for k, v in raw_headers if not k.startswith(":")),
                authority=pseudo.get(":authority"),
                http_version="2",
                body=bytes(body),
            )
        )
        payload = self._response_body()
        is_head = pseudo.get(":method") == "HEAD"
        h.send_headers(
            stream_id,
            [
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", str(len(payload))),
                ("x-upstream", self.name),
            ],
            end_stream=is_head,
        )
        if not is_head:
            h.send_data(stream_id, payload, end_stream=True)

    def _serve_websocket(self, conn: _Stream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        fragments: list[str | bytes] = []
        while ws.state is not ConnectionState.CLOSED:
            data = self._recv(conn)
            ws.receive_data(data or None)  # None means EOF to wsproto
            try:
                out = b"".join(self._ws_reply(ws, event, fragments) for event in ws.events())
            except wsproto.utilities.RemoteProtocolError as e:  # e.g. a non-upgrade request
                log.debug("%s: websocket protocol error: %s", self.name, e)
                if e.event_hint is not None:
                    with contextlib.suppress(wsproto.utilities.LocalProtocolError):
                        conn.sendall(ws.send(e.event_hint))
                return
            conn.sendall(out)
            if not data:
                return

    def _ws_reply(
        self, ws: wsproto.WSConnection, event: wsproto.events.Event, fragments: list[str | bytes]
    ) -> bytes:
        """Handle one wsproto event; return the bytes to send back."""
        if isinstance(event, wsproto.events.Request):
            self._record_request(
                Request(
                    method="GET",
                    path=event.target,
                    headers=_headers_dict((k.decode(), v.decode()) for k, v in event.extra_headers),
                    authority=event.host,
                    http_version="1.1",
                )
            )
            return ws.send(wsproto.events.AcceptConnection())
        if isinstance(event, wsproto.events.Message):
            fragments.append(event.data)
            if not event.message_finished:
                return b""
            message: str | bytes
            if isinstance(event, wsproto.events.TextMessage):
                message = "".join(f for f in fragments if isinstance(f, str))
                out = ws.send(wsproto.events.TextMessage(data="echo: " + message))
            else:
                message = b"".join(f for f in fragments if isinstance(f, bytes))
                out = ws.send(wsproto.events.BytesMessage(data=b"echo: " + message))
            fragments.clear()
            with self._lock:
                self._messages.append(message)
            return out
        if isinstance(event, wsproto.events.Ping):
            return ws.send(event.response())
        if isinstance(event, wsproto.events.CloseConnection) and (
            ws.state is ConnectionState.REMOTE_CLOSING
        ):
            return ws.send(event.response())
        return b""


class SlowUpstreamServer(UpstreamServer):
    """An HTTP/1.1 `UpstreamServer` that waits `delay` seconds before each response: a request
    stays in flight through the proxy that long. `request_arrived` is set at the first one."""

    def __init__(self, cert: trustme.LeafCert | ServerChain, delay: float,
                 name: str = "slow", *, io_timeout: float = 30.0) -> None:
        super().__init__(cert, "http1", name, io_timeout=io_timeout)
        self.delay = delay
        self.request_arrived = threading.Event()

    def _response_body(self) -> bytes:
        self.request_arrived.set()
        time.sleep(self.delay)
        return b"slow " * 1000 + b"done\n"


class SilentServer(_RecordingServer):
    """Accepts TCP and never answers: records what arrives (a ClientHello, at most) until the
    peer closes. An upstream that hangs the TLS handshake."""

    def __init__(self, name: str = "silent", *, io_timeout: float = 30.0) -> None:
        super().__init__(name, io_timeout=io_timeout)

    def _serve(self, conn: _Stream) -> None:
        while self._recv(conn):
            pass
