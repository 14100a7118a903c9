"""`--pinset-url`: fetch the signed pinset periodically and put it in force when it verifies.

The fetch is HTTPS only, one GET per file (`URL`, then `URL.minisig`), no redirects, bounded
in time (the whole fetch) and in size. Its upstream chain goes through pinproxy's own pin check
(`decide_handshake` against the pinset in force, inside OpenSSL's verification as for proxied
traffic), so a pinset may pin its own distribution host; it trusts the proxy's upstream CAs
(`--upstream-ca`, else certifi's bundle). Before any pinset is in force (first start, no cache)
only the CA checks apply: the signature is what protects that first fetch.

What may replace the pinset in force is decided in `pinproxy.remote`; an accepted pinset goes
in through `CurrentPinset.install`, the same swap (and the same listeners) as a file reload,
and is written to the cache. Each process fetches for itself (with `--workers N`, each worker):
no process trusts a file another one wrote without verifying it, and jitter spreads the fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import certifi
import h11
from mitmproxy.proxy import server_hooks
from OpenSSL import SSL, crypto

from pinproxy import metrics, minisign, remote
from pinproxy.errors import PinproxyError
from pinproxy.pins import CertificatePins
from pinproxy.pinset import Pinset, Unpinned
from pinproxy.policy import decide_handshake
from pinproxy.proxy._openssl import expect_name, verify_error_text, x509_pins
from pinproxy.reloading import CurrentPinset

__all__ = ["FetchError", "RemotePinset", "RemoteSettings", "fetch"]

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 30.0  # seconds for one whole fetch: both files, connect to last byte
MAX_PINSET_BYTES = 64 << 20
MAX_SIGNATURE_BYTES = 16 << 10  # a trusted comment is at most 8 KiB
JITTER = 0.1  # each wait is the refresh interval +- 10 %
FIRST_RETRY = 1.0  # seconds before retrying a failed fetch; doubles up to the interval
_START_POLL = 0.05  # seconds between looks at whether the proxy is up yet


class FetchError(PinproxyError):
    """The file could not be fetched: unreachable, TLS or pin failure, HTTP error, too big."""


def fetch(url: str, pinset: Pinset | None, ca_file: str | None, deadline: float,
          max_bytes: int) -> bytes:
    """GET `url` (blocking; run it in a thread): the body of a 200 response, or `FetchError`."""
    host, port, path = remote.check_url(url)
    where = f"{host}:{port}"
    try:
        timeout = max(0.001, deadline - time.monotonic())
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return _get(sock, url, host, path, pinset, ca_file or certifi.where(), deadline,
                        max_bytes)
    except TimeoutError:
        raise FetchError(f"{url}: no complete answer from {where} in time") from None
    except SSL.Error as e:
        raise FetchError(f"{url}: TLS with {where} failed: {_ssl_reason(e)}") from None
    except OSError as e:
        raise FetchError(f"{url}: cannot connect to {where}: {e.strerror or e}") from None
    except h11.ProtocolError as e:
        raise FetchError(f"{url}: not a valid HTTP/1.1 answer: {e}") from None


def _get(sock: socket.socket, url: str, host: str, path: str, pinset: Pinset | None,
         ca_file: str, deadline: float, max_bytes: int) -> bytes:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(ca_file)
    context.set_alpn_protos([b"http/1.1"])
    check = _PinCheck(host, pinset)
    conn = SSL.Connection(context, sock)
    conn.set_verify(SSL.VERIFY_PEER, check)
    expect_name(conn, host)
    conn.set_connect_state()
    sock.setblocking(False)
    try:
        _drive(conn.do_handshake, sock, deadline)
    except SSL.Error:
        if check.refusal:
            raise FetchError(check.refusal) from None
        raise
    if not check.passed:  # a handshake that never reached the check (never expected)
        raise FetchError(f"{host}: the pin check did not run; refusing")
    http = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 << 10)
    request = http.send(h11.Request(method="GET", target=path, headers=[
        ("Host", host), ("User-Agent", "pinproxy"), ("Accept", "*/*"),
        ("Connection", "close")])) + (http.send(h11.EndOfMessage()) or b"")
    while request:
        sent = _drive(functools.partial(conn.send, request[:16384]), sock, deadline)
        request = request[int(sent):]
    body = bytearray()
    status = 0
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            try:
                data = _drive(functools.partial(conn.recv, 65536), sock, deadline)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                data = b""
            http.receive_data(bytes(data) if data else b"")
        elif isinstance(event, h11.Response):
            status = event.status_code
            if status != 200:
                raise FetchError(f"{url}: HTTP {status} (expected 200; redirects "
                                 "are not followed)")
            for name, value in event.headers:
                if name == b"content-length" and int(value) > max_bytes:
                    raise FetchError(f"{url}: larger than {max_bytes} bytes")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_bytes:
                raise FetchError(f"{url}: larger than {max_bytes} bytes")
        elif isinstance(event, h11.EndOfMessage):
            with contextlib.suppress(SSL.Error):
                conn.shutdown()
            return bytes(body)
        else:  # ConnectionClosed before the end of the message
            raise FetchError(f"{url}: the connection closed mid-answer")


class _PinCheck:
    """OpenSSL's verify callback for the fetch: OpenSSL's verdict, then the pin check of the
    verified chain against the pinset in force (CA checks only while there is none)."""

    def __init__(self, host: str, pinset: Pinset | None) -> None:
        self.host = host
        self.pinset = pinset
        self.chain: dict[int, CertificatePins] = {}
        self.refusal = ""
        self.passed = False

    def __call__(self, _conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                 ok: int) -> bool:
        try:
            self.chain[depth] = x509_pins(cert)
            if not ok:
                self.refusal = (f"{self.host}: certificate at depth {depth} not verified: "
                                f"{verify_error_text(errno)}")
                return False
            if depth > 0:
                return True
            if self.pinset is None:  # no pinset in force yet: the signature protects this one
                self.passed = True
                return True
            chain = [self.chain[d] for d in sorted(self.chain)]
            decision = decide_handshake(self.pinset, [self.host], chain,
                                        dt.datetime.now(dt.UTC).date())
            if not decision.proceeds:
                self.refusal = (f"{self.host}: the distribution host fails the pinset in force:"
                                f" {decision.reason.value}")
                return False
            self.passed = True
            return True
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: no check, no fetch
            self.refusal = f"{self.host}: pin check failed: {e}"
            return False


def _drive[T](step: Callable[[], T], sock: socket.socket, deadline: float) -> T:
    """Run a non-blocking OpenSSL step to completion, waiting on the socket until `deadline`."""
    while True:
        try:
            return step()
        except SSL.WantReadError:
            event = selectors.EVENT_READ
        except SSL.WantWriteError:
            event = selectors.EVENT_WRITE
        with selectors.DefaultSelector() as selector:
            selector.register(sock, event)
            if not selector.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError


def _ssl_reason(error: SSL.Error) -> str:
    if isinstance(error, SSL.SysCallError):
        return "the server closed the connection"
    reasons = [str(item[-1]) for item in (error.args[0] if error.args else [])
               if isinstance(item, tuple)]
    return "; ".join(reasons) or str(error) or type(error).__name__


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    url: str
    key: minisign.PublicKey
    refresh: float  # seconds between fetches (before jitter)
    cache: str | None  # directory
    upstream_ca: str | None
    on_stale: str = "keep"  # keep | report | block: the pinset in force past valid_until


class RemotePinset:
    """Keeps the pinset in force in step with `URL`: start-up from the cache, then a fetch
    now and every refresh interval; `refresh_now()` (SIGHUP) fetches at once."""

    def __init__(self, settings: RemoteSettings, pinsets: CurrentPinset,
                 on_problem: Callable[[str], None] | None = None,
                 serving: Callable[[], bool] = lambda: True,
                 on_install: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.pinsets = pinsets
        self._on_problem = on_problem  # told why no pinset is in force yet (for /readyz)
        self._serving = serving  # the proxy is up: mitmproxy's start-up is over
        self._on_install = on_install  # told after each pinset put in force
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._signed: remote.Verified | None = None  # the last accepted pinset, stale or not
        self._source = ""  # where it came from
        self.stale = False  # it is past its valid_until (read by `StaleConnections`)

    def start_from_cache(self) -> bool:
        """Put the cached pinset in force, verified again; True if there was a good one."""
        if self.settings.cache is None:
            return False
        try:
            verified = remote.cached(self.settings.cache, self.settings.key)
        except remote.Refused as e:
            # WARNING: mitmproxy exits on an ERROR logged during its start-up
            logger.warning("pinproxy refused the cached pinset: %s; starting without it", e)
            metrics.record_fetch(e.outcome.value)
            return False
        if verified is None:
            return False
        self._install(verified, f"{self.settings.url} (cached in {self.settings.cache})")
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def refresh_now(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # mitmproxy's errorcheck addon exits on an ERROR logged before its start-up is over;
        # a failed first fetch must not stop a proxy that is meant to keep retrying.
        while not self._serving():
            await asyncio.sleep(_START_POLL)
        await asyncio.sleep(_START_POLL)
        retry = FIRST_RETRY
        while True:
            self._wake.clear()  # before the fetch: a SIGHUP during it fetches again after
            ok = await self.refresh()
            self.check_stale()
            if ok:
                retry = FIRST_RETRY
                wait = self.settings.refresh * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
            else:
                wait = min(retry, self.settings.refresh)
                retry = min(retry * 2, self.settings.refresh)
            if self._signed is not None and not self.stale and (
                    until := self._signed.pinset.valid_until) is not None:
                # wake when it goes stale: fetch then, and apply --on-stale if that fails
                left = (until - dt.datetime.now(dt.UTC)).total_seconds()
                wait = min(wait, max(left, 0.0) + _START_POLL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def refresh(self) -> bool:
        """One fetch; True when it reached a verdict on a good answer (accepted or unchanged,
        or refused on its content: retrying sooner would fetch the same)."""
        settings = self.settings
        # the signed pinset, even while --on-stale block has a blocking one in force: it
        # checks the distribution host and is what a newer pinset must succeed
        signed = self._signed
        in_force = signed.pinset if signed is not None else None
        try:
            verified = await asyncio.to_thread(self._fetch_and_verify, in_force)
            remote.check_succession(verified, in_force,
                                    signed.sha256 if signed is not None else None,
                                    dt.datetime.now(dt.UTC))
        except remote.Refused as e:
            metrics.record_fetch(e.outcome.value)
            if e.outcome is remote.Outcome.UNCHANGED:
                logger.debug("pinproxy: the pinset at %s is unchanged", settings.url)
                return True
            self._problem(f"refused the pinset from {settings.url}: {e}")
            return in_force is not None
        except FetchError as e:
            metrics.record_fetch(remote.Outcome.FETCH_ERROR.value)
            self._problem(f"could not fetch the pinset: {e}")
            return False
        except PinproxyError as e:
            metrics.record_fetch(remote.Outcome.FETCH_ERROR.value)
            self._problem(f"could not fetch the pinset from {settings.url}: {e}")
            return False
        metrics.record_fetch(remote.Outcome.ACCEPTED.value)
        self._install(verified, settings.url)
        if settings.cache is not None:
            try:
                await asyncio.to_thread(remote.write_cache, settings.cache, verified)
            except OSError as e:
                logger.error("pinproxy could not write the pinset cache %s: %s",
                             settings.cache, e.strerror or e)
        return True

    def _fetch_and_verify(self, in_force: Pinset | None) -> remote.Verified:
        settings = self.settings
        deadline = time.monotonic() + FETCH_TIMEOUT
        data = fetch(settings.url, in_force, settings.upstream_ca, deadline, MAX_PINSET_BYTES)
        signature = fetch(settings.url + remote.SIGNATURE_SUFFIX, in_force,
                          settings.upstream_ca, deadline, MAX_SIGNATURE_BYTES)
        return remote.verify_pinset(data, signature, settings.key, settings.url)

    def check_stale(self) -> None:
        """Apply `--on-stale` once the signed pinset passes its valid_until (logged once)."""
        signed = self._signed
        if signed is None or self.stale or not remote.is_stale(signed.pinset,
                                                               dt.datetime.now(dt.UTC)):
            return
        self.stale = True
        metrics.record_stale(True)
        what = {"keep": "still enforcing it",
                "report": "still enforcing it, and reporting every connection as stale",
                "block": "blocking every connection"}[self.settings.on_stale]
        logger.warning("pinproxy: the signed pinset in force went stale at %s (valid_until) and "
                       "no newer one could be fetched from %s; --on-stale %s: %s until one is",
                       _until(signed.pinset), self.settings.url, self.settings.on_stale, what)
        if self.settings.on_stale == "block":
            blocking = Pinset(rules=(), source=f"{self._source} (stale: --on-stale block)",
                              unpinned=Unpinned.BLOCK, serial=signed.pinset.serial,
                              valid_until=signed.pinset.valid_until)
            self.pinsets.install(blocking, blocking.source, None)

    def _install(self, verified: remote.Verified, source: str) -> None:
        pinset = verified.pinset
        first = self.pinsets.pinset is None
        self._signed, self._source = verified, source
        if self.stale:
            self.stale = False
            metrics.record_stale(False)
            logger.warning("pinproxy: a fresh signed pinset replaces the stale one")
        self.pinsets.install(pinset, source, verified.sha256)
        metrics.record_signed_pinset(pinset.serial, pinset.valid_until)
        self.check_stale()  # a stale cache at start-up
        self._on_install()
        logger.log(logging.WARNING if first else logging.INFO,
                   "pinproxy put in force the signed pinset from %s: serial %s, valid until "
                   "%s, key %s (%s)", source, pinset.serial if pinset.serial is not None
                   else "none", _until(pinset), self.settings.key.id_text,
                   verified.trusted_comment)

    def _problem(self, message: str) -> None:
        kept = "; the pinset in force stays" if self.pinsets.pinset is not None \
            else "; no pinset in force: refusing every connection"
        logger.error("pinproxy %s%s", message, kept)
        if self._on_problem is not None and self.pinsets.pinset is None:
            self._on_problem(message)


class StaleConnections:
    """A mitmproxy addon: each upstream connection made while the signed pinset in force is
    stale is counted, and with `--on-stale report` logged as stale (a WARNING)."""

    def __init__(self, signed: RemotePinset) -> None:
        self.signed = signed

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.signed.stale:
            return
        metrics.record_stale_connection()
        if self.signed.settings.on_stale == "report":
            host, port = data.server.address or ("", 0)
            logger.warning("pinproxy stale: connection to %s:%s under a pinset past its "
                           "valid_until (--on-stale report)", host, port,
                           extra={"event": "stale", "host": host, "port": port})


def _until(pinset: Pinset) -> str:
    return pinset.valid_until.isoformat() if pinset.valid_until is not None else "none"
