"""The upstream: Debian's nginx serving a tiny body over TLS (HTTP/1.1 and HTTP/2) on loopback.

nginx, not a Python server, so the upstream is never the bottleneck: one nginx worker serves
tens of thousands of small responses a second on one core, far above what a Python proxy
forwards. `worker_processes 1` leaves the other core to the proxy and curl; with more workers
nginx would compete with the proxy for the same two cores and blur the comparison.

It runs as the current user from its own directory (config, pid, error log, temp paths), in the
foreground under our control, and is stopped on exit, Ctrl-C and errors alike.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from bench import _proc
from bench.pki import BENCH_HOST, BenchPki

__all__ = ["Nginx", "NginxError"]

_BODY = "pinproxy bench\n"
_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    server {{
        listen {host}:{port} ssl http2;
        server_name {server_name};
        ssl_certificate {chain};
        ssl_certificate_key {key};
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
    server {{
        listen {host}:{status_port};
        location = /status {{ stub_status; }}
    }}
}}
"""
_ACCEPTS = re.compile(r"^\s*(\d+)\s+\d+\s+\d+\s*$", re.MULTILINE)


class NginxError(RuntimeError):
    """nginx is missing or did not start; the message says which and how to fix it."""


class Nginx:
    """`with Nginx(prefix, pki) as nginx:`: serving on `nginx.port` until the block ends."""

    def __init__(self, prefix: Path, pki: BenchPki) -> None:
        self.prefix = prefix
        self.pki = pki
        self.port = _proc.free_port()
        self.status_port = _proc.free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._status_queries = 0

    def __enter__(self) -> Self:
        binary = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
        if binary is None:
            raise NginxError("nginx not found: install it (Debian/Ubuntu: apt-get install -y "
                             "nginx-light) and run again")
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(_CONF.format(
            prefix=self.prefix, host=_proc.LOOPBACK, port=self.port, status_port=self.status_port,
            server_name=BENCH_HOST, chain=self.pki.chain_file, key=self.pki.key_file,
            body=_BODY.replace("\n", "\\n")))
        log = self.prefix / "nginx.out"
        self._process = _proc.spawn(
            [binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")],
            log)
        if not _proc.wait_until(self._process, lambda: _proc.accepting(self.port)
                                and _proc.accepting(self.status_port), 10):
            self.__exit__(None, None, None)
            errors = self.prefix / "error.log"
            reason = _proc.last_line(errors if errors.exists() else log)
            raise NginxError(f"nginx did not start: {reason}")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._process is not None:
            _proc.stop(self._process)
            self._process = None

    def accepted_connections(self) -> int:
        """nginx's `stub_status` accepts counter, minus the connections that asked for it."""
        self._status_queries += 1
        connection = http.client.HTTPConnection(_proc.LOOPBACK, self.status_port, timeout=5)
        try:
            connection.request("GET", "/status")
            text = connection.getresponse().read().decode("ascii")
        except OSError as e:
            raise NginxError(f"nginx stub_status did not answer: {e}") from None
        finally:
            connection.close()
        match = _ACCEPTS.search(text)
        if match is None:
            raise NginxError(f"unexpected stub_status reply: {text!r}")
        return int(match.group(1)) - self._status_queries
