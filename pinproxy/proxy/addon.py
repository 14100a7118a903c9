"""The mitmproxy addon: options, hooks and the OpenSSL verify callback. No policy lives here.

The pin check runs inside OpenSSL's certificate verification of every upstream handshake
(`set_verify` on the connection): rejecting there aborts the handshake before mitmproxy sends
Finished, so not one request byte reaches a server that fails its pins, whatever the protocol.
The other hooks only explain a refusal to the client (502 page, closed raw tunnel) and stop
what bypasses the handshake (plain http://, a Host naming another pinned host).
See ../shared/DESIGN.md for the mitmproxy traps this avoids.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader, traverse
from mitmproxy.proxy import commands, events, layer, layers, server_hooks
from mitmproxy.proxy.mode_specs import ProxyMode, RegularMode
from OpenSSL import SSL, crypto

from pinproxy.errors import HostnameError, PinproxyError
from pinproxy.hostnames import normalize_host
from pinproxy.loader import load_pinset
from pinproxy.pins import CertificatePins
from pinproxy.pinset import Location, Pinset
from pinproxy.policy import (
    Action,
    Decision,
    Reason,
    decide,
    decide_plaintext,
    refuse_on_error,
)
from pinproxy.proxy._openssl import verify_error_text, x509_pins
from pinproxy.report import ReportLog, log_line, refusal_page, violation_record

__all__ = ["Pinning"]

logger = logging.getLogger(__name__)

DEFAULT_PINSET = "config/pins.yaml"
# Options under which the verify callback would not run, or would not mean what it says.
_BYPASSES = {
    "ssl_insecure": "it turns off chain verification, so any certificate could claim a pinned key",
    "ignore_hosts": "ignored hosts are passed through without an upstream handshake to check",
    "allow_hosts": "hosts outside allow_hosts are passed through without a check",
}


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


async def _in_thread_yielding[T](function: Callable[[str], T], argument: str) -> T:
    """Run pure-Python work in a thread, handing the GIL back to the event loop often.

    Measured here: at the default 5 ms switch interval the loop waited up to 0.7 s at a time
    while a 100 000-rule pinset loaded in a thread; at 0.5 ms, 22 ms at most.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0005))
    try:
        return await asyncio.to_thread(function, argument)
    finally:
        sys.setswitchinterval(interval)


def _file_signature(path: str) -> tuple[str, int, int, int] | None:
    """What tells a changed pinset file from the one loaded (None when it cannot be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), stat.st_ino, stat.st_mtime_ns, stat.st_size


class Pinning:
    """Enforces a pinset on every upstream TLS connection mitmproxy makes."""

    def __init__(self, label: str = "") -> None:
        self.label = label  # e.g. "worker 1/2", shown in the start-up line
        self.pinset: Pinset | None = None
        self._pinset_signature: tuple[str, int, int, int] | None = None
        self._report_log: ReportLog | None = None
        # client id -> server id -> refusal, kept until the client leaves: in eager mode the
        # failed server connection is already closed when the client's request arrives.
        self._refusals: dict[str, dict[str, Decision]] = {}
        self._checked: set[str] = set()  # server ids whose handshake reached our verdict
        self._expiry_noted: set[Location] = set()
        self._reloading = False  # a background reload is running
        self._reload_again = False  # and another was asked for meanwhile

    # -- options ---------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option("pinset", str, DEFAULT_PINSET,
                          "Pinset YAML file whose pins every upstream TLS connection must satisfy.")
        loader.add_option("pinset_report_log", str, "",
                          "Append one JSON object per pin violation to this file.")
        _check_soon_that_pinning_is_active()

    def configure(self, updated: set[str]) -> None:
        for name, why in _BYPASSES.items():
            if name in updated and getattr(ctx.options, name):
                raise exceptions.OptionsError(f"pinproxy refuses '{name}': {why}")
        if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
            raise exceptions.OptionsError(
                "pinproxy refuses 'stream_large_bodies': mitmproxy cannot answer a streamed "
                "request with pinproxy's refusal (over HTTP/2 the client can hang)")
        if "connection_strategy" in updated and ctx.options.connection_strategy != "eager":
            raise exceptions.OptionsError(
                "pinproxy needs connection_strategy=eager: the upstream handshake, and so the pin"
                " check, must finish before the client's request is read")
        if "mode" in updated:
            for spec in ctx.options.mode:
                if not isinstance(ProxyMode.parse(spec), RegularMode):
                    raise exceptions.OptionsError(
                        f"pinproxy supports only the regular (forward proxy) mode, not {spec!r}:"
                        " other modes can pass traffic (QUIC/HTTP/3, DTLS) without the check")
        if "pinset" in updated:
            self.reload(force=False)
        if "pinset_report_log" in updated:
            self._open_report_log(ctx.options.pinset_report_log)

    def reload(self, force: bool = True) -> None:
        """Load the pinset file; a bad file raises `OptionsError` and the old pinset stays."""
        path = ctx.options.pinset
        signature = _file_signature(path)
        if not force and signature is not None and signature == self._pinset_signature:
            return
        try:
            pinset = load_pinset(path)
        except PinproxyError as e:
            raise exceptions.OptionsError(f"{e}{self._kept()}") from e
        self._install(pinset, path, signature)

    async def reload_in_background(self) -> None:
        """Reload the pinset read in a thread (SIGHUP): traffic keeps flowing, checked against
        the old pinset, while a big one loads (100 000 rules take seconds, during which a
        `reload` on the event loop would hold every connection). A bad file is logged and
        changes nothing; reloads asked for meanwhile are merged into one more."""
        if self._reloading:
            self._reload_again = True
            return
        self._reloading = True
        try:
            while True:
                self._reload_again = False
                path = ctx.options.pinset
                signature = _file_signature(path)  # before reading: a later change reloads
                try:
                    pinset = await _in_thread_yielding(load_pinset, path)
                except Exception as e:  # noqa: BLE001 - a failed reload keeps the old pinset
                    logger.error("pinproxy pinset reload failed: %s%s", e, self._kept())
                else:
                    self._install(pinset, path, signature)
                if not self._reload_again:
                    break
        finally:
            self._reloading = False

    def _kept(self) -> str:
        return "; the previous pinset stays in force" if self.pinset else ""

    def _install(self, pinset: Pinset, path: str,
                 signature: tuple[str, int, int, int] | None) -> None:
        if self.pinset is not None:  # the first load is announced by the startup line
            logger.info("pinproxy reloaded pinset %s: %d host rules, %d pins, mode %s, "
                        "unpinned %s", path, len(pinset.rules), pinset.pin_count, pinset.mode,
                        pinset.unpinned)
        self.pinset = pinset
        self._pinset_signature = signature
        self._expiry_noted.clear()

    def _open_report_log(self, path: str) -> None:
        if self._report_log is not None:
            self._report_log.close()
            self._report_log = None
        if path:
            try:
                self._report_log = ReportLog(path)
            except OSError as e:
                raise exceptions.OptionsError(
                    f"pinproxy cannot open report log {path!r}: {e.strerror or e}") from None

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        listening = ", ".join(f"{host}:{port}" for host, port, *_ in proxyserver.listen_addrs())
        ca_cert = Path(os.path.expanduser(ctx.options.confdir)) / "mitmproxy-ca-cert.pem"
        pinset = self.pinset
        loaded = (f"{len(pinset.rules)} host rules, {pinset.pin_count} pins from {pinset.source}"
                  if pinset else "NO PINSET: refusing every connection")
        logger.warning("pinproxy listening on %s%s; %s; clients must trust %s",
                       listening or "(nothing)", f" ({self.label})" if self.label else "",
                       loaded, ca_cert)

    def done(self) -> None:
        if self._report_log is not None:
            self._report_log.close()
        _check_soon_that_pinning_is_active()  # a script reload may have failed

    # -- the check -------------------------------------------------------------------------

    def tls_start_server(self, data: tls.TlsData) -> None:
        """Attach the pin check to this connection's certificate verification."""
        server = cast(connection.Server, data.conn)
        try:
            if data.ssl_conn is None:
                # Loaded as a script we run before mitmproxy's own tlsconfig: let it build the
                # connection first (it leaves an existing one alone), then add our check.
                ctx.master.addons.get("tlsconfig").tls_start_server(data)
            if data.ssl_conn is None:
                raise RuntimeError("mitmproxy created no TLS connection to check")
            names = list(dict.fromkeys(n for n in (
                server.sni, server.address[0] if server.address else None,
                data.context.client.sni) if n))
            data.ssl_conn.set_verify(SSL.VERIFY_PEER, _HandshakeCheck(self, data, names))
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: no check, no handshake
            logger.error("pinproxy could not attach the pin check: %s; refusing", e)
            host = server.address[0] if server.address else ""
            self._refuse(data.context.client, server, refuse_on_error(host, e))
            data.ssl_conn = _failing_connection()

    def tls_established_server(self, data: tls.TlsData) -> None:
        """A handshake that completed without our verdict (e.g. resumed) is treated as refused."""
        server = cast(connection.Server, data.conn)
        if server.id not in self._checked:
            decision = Decision(Action.BLOCK, Reason.INTERNAL_ERROR, server.sni or "", None,
                                detail="the upstream handshake completed without a pin check")
            self._refuse(data.context.client, server, decision)

    def on_verdict(self, data: tls.TlsData, decision: Decision,
                   served: Callable[[], list[CertificatePins]]) -> None:
        """Called by the verify callback with the decision for one handshake."""
        server = cast(connection.Server, data.conn)
        port = server.address[1] if server.address else None
        for rule in decision.expired:
            if rule.location not in self._expiry_noted:
                self._expiry_noted.add(rule.location)
                logger.warning("pinproxy rule for %s at %s expired on %s and is not enforced",
                               rule.host, rule.location, rule.expires)
        if decision.action is Action.ALLOW:
            self._checked.add(server.id)
            logger.debug(log_line(decision, port))
            return
        logger.warning(log_line(decision, port))
        self._write_report(decision, port, served)
        if decision.proceeds:
            self._checked.add(server.id)
        else:
            self._refuse(data.context.client, server, decision, log=False)

    def _refuse(self, client: connection.Client, server: connection.Server,
                decision: Decision, log: bool = True) -> None:
        self._checked.discard(server.id)
        self._refusals.setdefault(client.id, {})[server.id] = decision
        if log:
            logger.warning(log_line(decision, server.address[1] if server.address else None))

    def _write_report(self, decision: Decision, port: int | None,
                      served: Callable[[], list[CertificatePins]]) -> None:
        if self._report_log is None:
            return
        try:
            self._report_log.write(
                violation_record(decision, port, served(), dt.datetime.now(dt.UTC)))
        except OSError as e:
            logger.error("pinproxy could not write report log: %s", e)

    # -- what bypasses the handshake -------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Answer a refused connection with a page that explains it; refuse what was not checked."""
        refusal = self._refusals.get(flow.client_conn.id, {}).get(flow.server_conn.id)
        if refusal is not None:  # logged and reported when the handshake was refused
            _refuse_request(flow, 502, refusal)
            return
        try:
            decision, status = self._request_decision(flow)
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: no decision, no request
            logger.error("pinproxy request check failed: %s; refusing", e)
            decision, status = refuse_on_error(flow.request.host, e), 502
        if decision is None or decision.action is Action.ALLOW:
            return
        logger.warning(log_line(decision, flow.request.port))
        self._write_report(decision, flow.request.port, list)
        if decision.action is Action.BLOCK:
            _refuse_request(flow, status, decision)

    def _request_decision(self, flow: http.HTTPFlow) -> tuple[Decision | None, int]:
        """What a request on a connection that passed (or had no) upstream check may do."""
        pinset = self.pinset
        if pinset is None:
            return _no_pinset(flow.request.host), 502
        request = flow.request
        authority = _host_of(request.host_header) if request.host_header else request.host
        today = _today()
        if request.scheme == "http":
            for name in dict.fromkeys((request.host, authority)):
                decision = decide_plaintext(pinset, name, today)
                if decision.is_violation:
                    return decision, 502
            return None, 200
        checked = {_normalized(n) for n in
                   (request.host, flow.server_conn.sni, flow.client_conn.sni) if n}
        if _normalized(authority) in checked:
            return None, 200
        # The handshake checked other names: a pinned (or blocked) authority gets 421 so the
        # client retries on a connection of its own, which is checked for it.
        decision = decide(pinset, [authority], (), today)
        if decision.reason is Reason.PIN_MISMATCH or (
            decision.reason is Reason.NOT_PINNED and decision.is_violation
        ):
            decision = replace(decision, reason=Reason.MISDIRECTED, detail=(
                f"the request names {decision.host}, but its connection was checked for "
                f"{', '.join(sorted(c for c in checked if c))}"))
            return decision, 421
        return decision, 502

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Close raw tunnels whose upstream check failed, and refuse raw plaintext to pinned hosts.

        mitmproxy's TCP layer would write into the dead TLS connection and leave the client
        hanging, and it ignores `flow.kill()`; so the layer itself is replaced.
        """
        try:
            if nextlayer.layer is None:
                ctx.master.addons.get("nextlayer").next_layer(nextlayer)
            if not isinstance(nextlayer.layer, layers.TCPLayer | layers.UDPLayer):
                return
            context = nextlayer.context
            refusal = self._refusals.get(context.client.id, {}).get(context.server.id)
            if refusal is None and not context.server.tls:
                host = context.server.address[0] if context.server.address else ""
                refusal = (decide_plaintext(self.pinset, host, _today()) if self.pinset
                           else _no_pinset(host))
                if refusal.action is not Action.ALLOW:
                    port = context.server.address[1] if context.server.address else None
                    logger.warning(log_line(refusal, port))
                    self._write_report(refusal, port, list)
                if refusal.proceeds:
                    return
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: close, never forward
            logger.error("pinproxy could not decide the tunnel layer: %s; closing it", e)
            refusal = refuse_on_error("", e)
        if refusal is not None:
            nextlayer.layer = _CloseClient(nextlayer.context)

    def client_disconnected(self, client: connection.Client) -> None:
        self._refusals.pop(client.id, None)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._checked.discard(data.server.id)


def _check_soon_that_pinning_is_active() -> None:
    """Shut the proxy down if, once loading settles, no `Pinning` addon is in the hook chain.

    mitmproxy can leave an addon registered but out of the chain (a bad `--set` while a
    script loads) or unload a script whose reload failed, and then keeps proxying: unpinned.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no proxy running (unit tests drive hooks directly)
    loop.call_soon(_require_active_pinning)


def _require_active_pinning() -> None:
    master = ctx.master
    if master.should_exit.is_set():
        return
    if not any(isinstance(a, Pinning) for a in traverse(master.addons.chain)):
        logger.error("pinproxy is not active (mitmproxy did not finish loading it; check the "
                     "options and the addon script): shutting down rather than proxying "
                     "without pin checks")
        raise SystemExit(1)  # stop serving now, and tell the supervisor it failed


class _HandshakeCheck:
    """OpenSSL's verify callback for one upstream handshake.

    OpenSSL calls it once per certificate of the chain it built and verified, root first and
    the leaf (depth 0) last. Returning False aborts the handshake. OpenSSL's own verdict is
    kept: a certificate it rejects is never accepted here.
    """

    __slots__ = ("addon", "chain", "data", "names")

    def __init__(self, addon: Pinning, data: tls.TlsData, names: list[str]) -> None:
        self.addon = addon
        self.data = data
        self.names = names
        self.chain: dict[int, CertificatePins] = {}

    def __call__(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                 ok: int) -> bool:
        try:
            certificate = x509_pins(cert)
            self.chain[depth] = certificate
            if not ok:
                self._verdict(conn, Decision(
                    Action.BLOCK, Reason.CHAIN_NOT_VERIFIED, self.names[0] if self.names else "",
                    None, tuple(self._chain()), detail=_verify_error(errno, depth)))
                return False
            if depth > 0:
                return True
            pinset = self.addon.pinset
            decision = (decide(pinset, self.names, self._chain(), _today()) if pinset
                        else _no_pinset(self.names[0] if self.names else ""))
            self._verdict(conn, decision)
            return decision.proceeds
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: an error fails the handshake
            logger.error("pinproxy pin check failed: %s; refusing", e)
            try:
                self._verdict(conn, refuse_on_error(self.names[0] if self.names else "", e))
            except Exception:  # already refusing; reporting must not undo that
                logger.exception("pinproxy could not record a refusal")
            return False

    def _chain(self) -> list[CertificatePins]:
        return [self.chain[depth] for depth in sorted(self.chain)]

    def _verdict(self, conn: SSL.Connection, decision: Decision) -> None:
        self.addon.on_verdict(self.data, decision, lambda: _served_chain(conn))


def _served_chain(conn: SSL.Connection) -> list[CertificatePins]:
    """The certificates the server sent, for reports only (never for the decision): best
    effort, so a report can never turn a report-mode pass into a refusal."""
    try:
        sent = conn.get_peer_cert_chain() or []
        return [x509_pins(c) for c in sent]
    except (SSL.Error, crypto.Error, ValueError) as e:
        logger.debug("pinproxy could not read the served chain for a report: %s", e)
        return []


def _verify_error(errno: int, depth: int) -> str:
    return f"OpenSSL rejected the certificate at depth {depth}: {verify_error_text(errno)}"


def _no_pinset(host: str) -> Decision:
    return Decision(Action.BLOCK, Reason.INTERNAL_ERROR, host, None,
                    detail="no pinset is loaded")


def _refuse_request(flow: http.HTTPFlow, status: int, decision: Decision) -> None:
    """Answer in place of the server. A streamed request body cannot coexist with a response
    set in `requestheaders` (mitmproxy raises), so the body is read and dropped instead."""
    flow.request.stream = False
    flow.response = http.Response.make(status, refusal_page(decision), {
        "Content-Type": "text/plain; charset=utf-8",
        "X-Pinproxy-Reason": decision.reason.value,
    })


def _normalized(name: str) -> str | None:
    try:
        return normalize_host(name)
    except HostnameError:
        return None


def _host_of(authority: str) -> str:
    """The host part of a Host header or :authority, without port or IPv6 brackets."""
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    host, _, port = authority.rpartition(":")
    return host if host and port.isdigit() else authority


def _failing_connection() -> SSL.Connection:
    """A client connection whose handshake can only fail: the fallback when no check attached."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    conn = SSL.Connection(context)
    conn.set_verify(SSL.VERIFY_PEER, lambda *_: False)
    conn.set_connect_state()
    return conn


class _CloseClient(layer.Layer):
    """A layer that closes the client connection at once: the end of a refused raw tunnel."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)

