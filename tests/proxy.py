"""The real proxy as a child process, and the real clients the end-to-end tests drive through it.

Nothing here imports mitmproxy: the proxy runs exactly as a user starts it (`pinproxy run` or
`mitmdump -s addons/pinning.py`), and is observed only through its port, output and files.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import h11
import wsproto
import wsproto.events

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"pinproxy listening on [^;]*?:(\d+)[ ;]")
_ADMIN = re.compile(r"; admin on http://[^\s]*:(\d+)")


@dataclass
class Proxy:
    """A running proxy process; its combined output is collected in the background."""

    process: subprocess.Popen[str]
    confdir: Path
    report_log: Path | None = None
    port: int = 0
    admin_port: int | None = None  # None when the admin endpoint is off
    _lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None, "this proxy runs without an admin endpoint"
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.output()):
                return match
            if self.process.poll() is not None and not re.search(pattern, self.output()):
                break
            time.sleep(0.02)
        raise AssertionError(f"no output matching {pattern!r}; output so far:\n{self.output()}")

    def log_lines_since(self, mark: int) -> str:
        return self.output()[mark:]

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.process.stdout:
            self.process.stdout.close()


def pinproxy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pinproxy", *args]


def mitmdump_command(*args: str, script: Path = REPO / "addons" / "pinning.py") -> list[str]:
    mitmdump = Path(sys.executable).parent / "mitmdump"
    return [str(mitmdump), "-s", str(script), *args]


def start(command: list[str], confdir: Path, cwd: Path = REPO, timeout: float = 30.0,
          report_log: Path | None = None) -> Proxy:
    """Start a proxy and wait until it says where it listens."""
    process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proxy = Proxy(process=process, confdir=confdir, report_log=report_log)
    threading.Thread(target=proxy._drain, daemon=True).start()
    try:
        proxy.port = int(proxy.wait_for_output(_LISTENING.pattern, timeout).group(1))
        if admin := _ADMIN.search(proxy.output()):
            proxy.admin_port = int(admin.group(1))
    except AssertionError:
        proxy.__exit__()
        raise
    return proxy


def start_pinproxy(pinset: Path, confdir: Path, upstream_ca: Path, *extra: str,
                   report_log: Path | None = None) -> Proxy:
    if report_log is not None:
        extra = (*extra, "--report-log", str(report_log))
    if not any(arg.startswith("--admin-listen") for arg in extra):
        extra = (*extra, "--admin-listen", "127.0.0.1:0")  # never the fixed default port
    return start(pinproxy_command(
        "run", "--pinset", str(pinset), "--listen-port", "0", "--confdir", str(confdir),
        "--upstream-ca", str(upstream_ca), *extra), confdir, report_log=report_log)


def report_records(proxy: Proxy) -> list[dict[str, object]]:
    """The JSON objects of the proxy's report log, one per line."""
    if proxy.report_log is None or not proxy.report_log.exists():
        return []
    return [json.loads(line) for line in proxy.report_log.read_text().splitlines()]


def run_pinproxy(*args: str, cwd: Path = REPO, timeout: float = 30.0,
                 ) -> subprocess.CompletedProcess[str]:
    """Run a short pinproxy command (`check`, `pin`, a `run` that must refuse to start)."""
    return subprocess.run(pinproxy_command(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


# -- clients --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CurlResult:
    status: int
    http_version: str
    body: str
    exit_code: int
    stderr: str


def curl(proxy: Proxy, name: str, port: int, path: str = "/", *extra: str,
         scheme: str = "https", timeout: float = 20.0) -> CurlResult:
    """curl through the proxy to `scheme://name/path`, the tunnel going to 127.0.0.1:port.

    The test names do not resolve, so `--connect-to` makes curl CONNECT to the loopback
    server while SNI and Host carry the name: the proxy checks both.
    """
    connect_to = f"{name}:{443 if scheme == 'https' else 80}:127.0.0.1:{port}"
    return _curl(proxy, ["--connect-to", connect_to, *extra, f"{scheme}://{name}{path}"], timeout)


def _curl(proxy: Proxy, args: list[str], timeout: float) -> CurlResult:
    curl_path = shutil.which("curl")
    assert curl_path, "curl is required (installed by .ci/run)"
    args = [curl_path, "--silent", "--show-error", "--proxy", proxy.url,
            "--cacert", str(proxy.ca_cert), "--max-time", str(timeout),
            "--write-out", "\n%{http_code} %{http_version}", *args]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 5, check=False)
    body, _, trailer = done.stdout.rpartition("\n")
    status, _, version = trailer.partition(" ")
    return CurlResult(int(status or 0), version, body, done.returncode, done.stderr)


def curl_plain(proxy: Proxy, url: str, *extra: str, timeout: float = 20.0) -> CurlResult:
    """curl through the proxy to a URL as given (absolute-form for http://, no --connect-to)."""
    return _curl(proxy, [*extra, url], timeout)


def tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A socket through the proxy's CONNECT tunnel to host:port."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        assert chunk, f"proxy closed the CONNECT: {reply!r}"
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    return sock


def tls_tunnel(proxy: Proxy, name: str, port: int, alpn: list[str] | None = None,
               connect_host: str = "127.0.0.1") -> ssl.SSLSocket:
    """A TLS connection through the proxy (trusting its CA) to connect_host:port, SNI `name`."""
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(tunnel(proxy, connect_host, port), server_hostname=name)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, float]:
    """Everything the peer sends until it closes; and how long that took."""
    sock.settimeout(timeout)
    started = time.monotonic()
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (ssl.SSLError, ConnectionResetError):
        pass
    return data, time.monotonic() - started


def websocket_exchange(proxy: Proxy, name: str, port: int, text: str) -> str | int:
    """Open a WebSocket through the proxy and send one message: the echo, or the HTTP status
    of a refused upgrade."""
    with tls_tunnel(proxy, name, port, alpn=["http/1.1"]) as sock:
        sock.settimeout(10)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(ws.send(wsproto.events.Request(host=name, target="/ws")))
        while True:
            data = sock.recv(65536)
            if not data:
                return 0
            if data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 101"):
                return int(data.split(b" ")[1])
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.AcceptConnection):
                    sock.sendall(ws.send(wsproto.events.TextMessage(data=text)))
                elif isinstance(event, wsproto.events.TextMessage):
                    sock.sendall(ws.send(wsproto.events.CloseConnection(code=1000)))
                    return event.data
                elif isinstance(event, wsproto.events.RejectConnection):
                    return event.status_code


def http1_request(sock: socket.socket, host: str, path: str = "/") -> h11.Response:
    """One HTTP/1.1 request on an open connection; returns the response head."""
    conn = h11.Connection(h11.CLIENT)
    sock.sendall(conn.send(h11.Request(method="GET", target=path,
                                       headers=[("Host", host), ("Connection", "close")])))
    sock.sendall(conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            return event
