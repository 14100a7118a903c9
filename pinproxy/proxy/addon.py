"""The mitmproxy addon: options, hooks and the OpenSSL verify callback. No policy lives here.

The pin check runs inside OpenSSL's certificate verification of every upstream handshake
(`set_verify` on the connection): rejecting there aborts the handshake before mitmproxy sends
Finished, so not one request byte reaches a server that fails its pins, whatever the protocol.
The other hooks only explain a refusal to the client (a 502 or 421 page, a closed raw tunnel)
and stop what bypasses the handshake (plain http://, a Host naming another pinned host). Each
hook turns mitmproxy's objects into plain values, asks `pinproxy.policy`, and applies the
answer; the pinset in force is a `pinproxy.reloading.CurrentPinset`.
See docs/design.md for the mitmproxy traps this avoids.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader, traverse
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers.http import HttpErrorHook  # type: ignore[attr-defined]  # (no __all__)
from mitmproxy.proxy.layers.tls import TlsFailedServerHook
from mitmproxy.proxy.mode_specs import ProxyMode, RegularMode
from OpenSSL import SSL, crypto

from pinproxy import metrics
from pinproxy.admin import Readiness
from pinproxy.errors import PinproxyError, quote
from pinproxy.learned import NOTHING_LEARNED, Learned
from pinproxy.loader import load_pinset
from pinproxy.pins import CertificatePins
from pinproxy.pinset import Location, Pinset
from pinproxy.policy import (
    Action,
    Decision,
    Reason,
    decide_handshake,
    decide_request,
    decide_tunnel,
    refusal_status,
    refuse_on_error,
    refuse_unchecked,
    refuse_unverified,
)
from pinproxy.proxy._mitmproxy_private import close_connection
from pinproxy.proxy._openssl import verify_error_text, x509_pins
from pinproxy.proxy.collector import CollectorTransport
from pinproxy.proxy.learning import LearnState
from pinproxy.reloading import CurrentPinset
from pinproxy.report import (
    ReportLog,
    decision_fields,
    expiry_note,
    log_line,
    pinset_summary,
    refusal_page,
    violation_record,
)
from pinproxy.reporting import QUEUE_SIZE, ReportSender
from pinproxy.tools.lint import protects_nothing

__all__ = ["Pinning"]

logger = logging.getLogger(__name__)

# Options under which the verify callback would not run, or would not mean what it says.
_BYPASSES = {
    "ssl_insecure": "it turns off chain verification, so any certificate could claim a pinned key",
    "ignore_hosts": "ignored hosts are passed through without an upstream handshake to check",
    "allow_hosts": "hosts outside allow_hosts are passed through without a check",
}


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class Pinning:
    """Enforces a pinset on every upstream TLS connection mitmproxy makes."""

    # The `pinset` option's default: none. `pinproxy run` always names the pinset, and when an
    # option update fails mitmproxy re-applies the previous values, the defaults at start-up:
    # a default file there would be loaded, and its error reported instead of the real one.
    pinset_default = ""

    def __init__(self, label: str = "", load: Callable[[str], Pinset] = load_pinset,
                 report_queue: int = QUEUE_SIZE) -> None:
        self.label = label  # e.g. "worker 1/2", shown in the start-up line
        self._expiry_noted: set[Location] = set()
        self.pinsets = CurrentPinset(load, on_install=self._installed,
                                     on_failure=lambda _: metrics.record_load_failed())
        self.readiness = Readiness()  # what /readyz reports
        self.admin_url = ""  # the admin endpoint, named in the start-up line when there is one
        self.summary: dict[str, Any] | None = None  # what /pinset shows, made once per load
        self._report_log: ReportLog | None = None
        # report_uri: a thread started in `running`, stopped in `done`; hooks only enqueue
        self._collector = CollectorTransport(lambda: self.pinsets.pinset)
        self.reports = ReportSender(self._collector, queue_size=report_queue)
        # client -> server id -> refusal, as long as the client connection lives: in eager mode
        # the failed server connection is already closed when the client's request arrives.
        self._refusals: weakref.WeakKeyDictionary[connection.Client, dict[str, Decision]] = (
            weakref.WeakKeyDictionary())
        # server connections whose handshake passed our check -> what deciding again needs
        self._checked: weakref.WeakKeyDictionary[connection.Server, _Verified] = (
            weakref.WeakKeyDictionary())
        self.learning: LearnState | None = None  # --learn-file: trust on first use

    def learned(self) -> Learned:
        """What the policy sees of the learned hosts (nothing without --learn-file)."""
        return self.learning.view() if self.learning is not None else NOTHING_LEARNED

    def refresh_learned(self) -> bool:
        """Whether the learn file changed (another worker learned) and was read again."""
        return self.learning is not None and self.learning.refresh_if_changed()

    def learn(self, decision: Decision) -> None:
        """Record a FIRST_USE decision's pins; raises (and so refuses) without a learn file."""
        if self.learning is None:
            raise RuntimeError("the pinset learns on first use, but no --learn-file is set")
        self.learning.learn(decision)

    def _installed(self, pinset: Pinset) -> None:
        self._expiry_noted.clear()
        metrics.record_loaded(pinset, self.pinsets.loaded_at)
        self.summary = pinset_summary(pinset, self.pinsets.path, self.pinsets.sha256,
                                      self.pinsets.loaded_at)
        self.readiness.pinset_loaded = True
        if (nothing := protects_nothing(pinset, _today())) is not None:
            logger.warning("pinproxy: %s", nothing)
        self._recheck_open_connections(pinset)

    @property
    def pinset(self) -> Pinset | None:
        """The pinset in force (None until one loaded: then every connection is refused)."""
        return self.pinsets.pinset

    # -- options ---------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option("pinset", str, self.pinset_default,
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
                        "pinproxy supports only the regular (forward proxy) mode, not "
                        f"{quote(spec)}: other modes can pass traffic (QUIC/HTTP/3, DTLS)"
                        " without the check")
        if "pinset" in updated and ctx.options.pinset:  # "": no pinset named, nothing to load
            self.reload(force=False)
        if "pinset_report_log" in updated:
            self._open_report_log(ctx.options.pinset_report_log)
        if "ssl_verify_upstream_trusted_ca" in updated:  # collectors: the upstreams' trust
            self._collector.ca_file = ctx.options.ssl_verify_upstream_trusted_ca

    def reload(self, force: bool = True) -> None:
        """Load the pinset file; a bad file raises `OptionsError` and the old pinset stays."""
        try:
            self.pinsets.load(ctx.options.pinset, force=force)
        except PinproxyError as e:
            raise exceptions.OptionsError(f"{e}{self.pinsets.kept_note}") from e

    async def reload_in_background(self) -> None:
        """Reload the pinset, read in a thread (SIGHUP): traffic keeps flowing, checked against
        the old pinset, while a big one loads. A bad file is logged and changes nothing."""
        await self.pinsets.load_in_background(ctx.options.pinset)

    def _open_report_log(self, path: str) -> None:
        if self._report_log is not None:
            self._report_log.close()
            self._report_log = None
        if path:
            try:
                self._report_log = ReportLog(path)
            except OSError as e:
                raise exceptions.OptionsError(
                    f"pinproxy cannot open report log {quote(path)}: {e.strerror or e}") from None

    def reopen_report_log(self) -> None:
        """Open the report log's path again (SIGHUP, after logrotate moved the file). A failure
        is logged; the next violation record tries again (and is counted if it fails)."""
        if self._report_log is None:
            return
        try:
            self._report_log.reopen()
        except OSError as e:
            logger.error("pinproxy could not reopen report log %s: %s; the next record tries "
                         "again", quote(str(self._report_log.path)), e.strerror or e)

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        listening = ", ".join(f"{host}:{port}" for host, port, *_ in proxyserver.listen_addrs())
        ca_cert = Path(os.path.expanduser(ctx.options.confdir)) / "mitmproxy-ca-cert.pem"
        pinset = self.pinset
        loaded = (f"{len(pinset.rules)} host rules, {pinset.pin_count} pins from {pinset.source}"
                  if pinset else "NO PINSET: refusing every connection")
        admin = f"; admin on {self.admin_url}" if self.admin_url else ""
        logger.warning("pinproxy listening on %s%s; %s; clients must trust %s%s",
                       listening or "(nothing)", f" ({self.label})" if self.label else "",
                       loaded, ca_cert, admin)
        self.readiness.listening = bool(listening)
        self._collector.listening = [(str(h), int(p)) for h, p, *_ in proxyserver.listen_addrs()]
        self.reports.start()

    def client_connected(self, client: connection.Client) -> None:
        metrics.record_client_connected()

    def client_disconnected(self, client: connection.Client) -> None:
        metrics.record_client_disconnected()

    def done(self) -> None:
        self.reports.close()
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
        if server not in self._checked:
            self._refuse(data.context.client, server, refuse_unchecked(server.sni or ""))

    def on_verdict(self, data: tls.TlsData, decision: Decision,
                   served: Callable[[], list[CertificatePins]], names: Sequence[str]) -> None:
        """Called by the verify callback with the decision for one handshake of `names`."""
        server = cast(connection.Server, data.conn)
        port = server.address[1] if server.address else None
        verified = _Verified(data.context.client, tuple(names), port, decision)
        metrics.record_decision(decision)
        for rule in decision.expired:
            if rule.location not in self._expiry_noted:
                self._expiry_noted.add(rule.location)
                logger.warning("pinproxy rule for %s at %s expired on %s and is not enforced%s",
                               rule.host, rule.location, rule.expires, expiry_note(rule))
        if decision.action is Action.ALLOW:
            self._checked[server] = verified
            _log_decision(decision, port)
            return
        _log_decision(decision, port)
        self._write_report(decision, port, served)
        if decision.proceeds:
            self._checked[server] = verified
        else:
            self._refuse(data.context.client, server, decision, log=False)

    def _refuse(self, client: connection.Client, server: connection.Server,
                decision: Decision, log: bool = True) -> None:
        self._checked.pop(server, None)
        self._refusals.setdefault(client, {})[server.id] = decision
        if log:  # a refusal not decided by the verify callback: count it here
            metrics.record_decision(decision)
            _log_decision(decision, server.address[1] if server.address else None)

    def refuse_server(self, client: connection.Client, server: connection.Server,
                      decision: Decision) -> None:
        """Refuse `server` for `client` from outside the verify callback (an upstream that
        timed out): logged, counted, and answered with the 502 page like a failed check."""
        self._refuse(client, server, decision)

    def _write_report(self, decision: Decision, port: int | None,
                      served: Callable[[], list[CertificatePins]]) -> None:
        """One record for the report log and the report_uri collector (queued, never sent
        here)."""
        pinset = self.pinset
        report_uri = pinset.report_uri_for(decision.rule) if pinset is not None else None
        if self._report_log is None and report_uri is None:
            return
        record = violation_record(decision, port, served(), dt.datetime.now(dt.UTC))
        if report_uri is not None and pinset is not None:
            self.reports.submit(report_uri, record, pinset.report_dedupe)
        if self._report_log is None:
            return
        try:
            self._report_log.write(record)
        except OSError as e:
            metrics.record_report_write_error()
            logger.error("pinproxy could not write a record to report log %s: %s; the next record"
                         " tries again", quote(str(self._report_log.path)), e.strerror or e)

    # -- revocation: open connections decided again after a reload -------------------------

    def _recheck_open_connections(self, pinset: Pinset) -> None:
        """Decide every open checked connection again, against the pinset just installed.

        A verdict given at the handshake would otherwise hold for the connection's life
        (keep-alive, HTTP/2, tunnels), so removing a compromised pin would not reach it. Runs
        on the event loop thread, right after the install: no request is handled in between.
        """
        today = _today()
        announced: set[str] = set()  # clients whose refusal is logged (once, not per server)
        for server, verified in list(self._checked.items()):
            if verified.client.state is ConnectionState.CLOSED:
                continue  # its client is gone: nothing left to refuse
            try:
                decision = decide_handshake(pinset, verified.names, verified.decision.chain,
                                            today, self.learned())
                decision = replace(decision, detail="; ".join(
                    d for d in (_RECHECKED, decision.detail) if d))
                if decision.proceeds:
                    self._kept(server, verified, decision)
                    continue
            except Exception as e:  # noqa: BLE001 - deny-on-error guard: no decision, no connection
                logger.error("pinproxy could not re-check a connection after the reload: %s; "
                             "closing it", e)
                decision = refuse_on_error(verified.names[0] if verified.names else "", e)
            try:
                self._revoke(server, verified, decision, announce=verified.client.id not in
                             announced)
                announced.add(verified.client.id)
            except Exception:  # the refusal is recorded first: its next request is refused
                logger.exception("pinproxy could not close a connection refused after the reload")

    def _kept(self, server: connection.Server, verified: _Verified, decision: Decision) -> None:
        """A connection that still passes keeps flowing; a violation that report mode lets
        through is logged and reported once, not at every reload."""
        self._checked[server] = replace(verified, decision=decision)
        if decision.is_violation and not _same_verdict(decision, verified.decision):
            metrics.record_decision(decision)
            _log_decision(decision, verified.port)
            self._write_report(decision, verified.port, list)

    def _revoke(self, server: connection.Server, verified: _Verified, decision: Decision,
                announce: bool = True) -> None:
        """Refuse a connection that no longer passes, like a refused handshake: the refusal
        is recorded first, so the next request of the client's tunnel (HTTP/1 keep-alive, a
        new HTTP/2 stream) is answered with the refusal page; then the server connection is
        closed (mitmproxy then ends a raw TCP/TLS tunnel, client side included).

        A tunnel whose server connection mitmproxy re-opened has two checked ones: the first
        (closed; its requests' flows still name it) and the open one. Both are refused, and
        `announce` logs, reports and counts the refusal once per client."""
        self._refuse(verified.client, server, decision, log=announce)
        if announce:
            self._write_report(decision, verified.port, list)
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is None:
            raise RuntimeError("mitmproxy's proxyserver addon is not loaded")
        close_connection(proxyserver, verified.client, server,
                         "pin check failed after a pinset reload")

    # -- what bypasses the handshake -------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Answer a refused connection with a page that explains it; refuse what was not checked."""
        if flow.response is not None:  # already answered (the 407 of proxy authentication)
            return
        refusal = self._refusal(flow.client_conn, flow.server_conn)
        if refusal is not None:  # logged and reported when the handshake was refused
            _refuse_request(flow, refusal)
            return
        request = flow.request
        try:
            decision = decide_request(
                self.pinset, request.scheme, request.host, request.host_header,
                (flow.server_conn.sni, flow.client_conn.sni), _today(), self.learned())
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: no decision, no request
            logger.error("pinproxy request check failed: %s; refusing", e)
            decision = refuse_on_error(request.host, e)
        if decision is None or decision.action is Action.ALLOW:
            return
        metrics.record_decision(decision)
        _log_decision(decision, request.port)
        self._write_report(decision, request.port, list)
        if not decision.proceeds:
            _refuse_request(flow, decision)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A CONNECT whose (eager) upstream connection pinproxy refused before it was up (an
        upstream that did not accept in time) gets the page instead of mitmproxy's 502."""
        refusal = self._refusal(flow.client_conn, flow.server_conn)
        if refusal is not None:
            flow.response = _refusal_response(refusal)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Close raw tunnels whose upstream check failed, and refuse raw plaintext to pinned hosts.

        mitmproxy's TCP layer would write into the dead TLS connection and leave the client
        hanging, and it ignores `flow.kill()`; so the layer itself is replaced.
        """
        try:
            if nextlayer.layer is None:
                ctx.master.addons.get("nextlayer").next_layer(nextlayer)
            if not isinstance(nextlayer.layer, layers.TCPLayer | layers.UDPLayer):
                _explain_absolute_form_refusals(nextlayer, self._refusal)
                return
            context = nextlayer.context
            refusal = self._refusal(context.client, context.server)
            if refusal is None:
                host, port = context.server.address or ("", None)
                refusal = decide_tunnel(self.pinset, host, context.server.tls, _today(),
                                        self.learned())
                if refusal is None:
                    return
                if refusal.action is not Action.ALLOW:
                    metrics.record_decision(refusal)
                    _log_decision(refusal, port)
                    self._write_report(refusal, port, list)
                if refusal.proceeds:
                    return
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: close, never forward
            logger.error("pinproxy could not decide the tunnel layer: %s; closing it", e)
            refusal = refuse_on_error("", e)
        if refusal is not None:
            nextlayer.layer = _CloseClient(nextlayer.context)

    def _refusal(self, client: connection.Client, server: connection.Server) -> Decision | None:
        """The refusal recorded for this client's handshake with `server`, if any."""
        refusals = self._refusals.get(client)
        return refusals.get(server.id) if refusals else None


def _log_decision(decision: Decision, port: int | None) -> None:
    """The one canonical line of a decision: allowed at INFO, reported or blocked at WARNING;
    the fields of the JSON record and the text line are the same, made once."""
    level = logging.INFO if decision.action is Action.ALLOW else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    fields = decision_fields(decision, port)
    logger.log(level, log_line(decision, port, fields), extra={"event": "decision", **fields})


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


_RECHECKED = "re-checked after a pinset reload"


@dataclass(frozen=True, slots=True)
class _Verified:
    """What deciding a checked connection again needs, kept while its server connection lives:
    the client (to refuse and close), the names and verified chain of the handshake (in
    `decision.chain`), and the verdict in force."""

    client: connection.Client
    names: tuple[str, ...]
    port: int | None
    decision: Decision


def _same_verdict(a: Decision, b: Decision) -> bool:
    return (a.action, a.reason, a.host, a.rule) == (b.action, b.reason, b.host, b.rule)


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
                self._verdict(conn, refuse_unverified(self.names, self._chain(),
                                                      _verify_error(errno, depth)))
                return False
            if depth > 0:
                return True
            started = time.perf_counter()
            decision = decide_handshake(self.addon.pinset, self.names, self._chain(), _today(),
                                        self.addon.learned())
            metrics.CHECK_DURATION.observe(time.perf_counter() - started)
            if decision.reason is Reason.FIRST_USE and self.addon.refresh_learned():
                decision = decide_handshake(self.addon.pinset, self.names, self._chain(),
                                            _today(), self.addon.learned())
            if decision.reason is Reason.FIRST_USE:  # only a chain OpenSSL verified gets here
                self.addon.learn(decision)
            if decision.rule is not None:
                _record_leaf(decision, cert)
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
        self.addon.on_verdict(self.data, decision, lambda: _served_chain(conn), self.names)


def _served_chain(conn: SSL.Connection) -> list[CertificatePins]:
    """The certificates the server sent, for reports only (never for the decision): best
    effort, so a report can never turn a report-mode pass into a refusal."""
    try:
        sent = conn.get_peer_cert_chain() or []
        return [x509_pins(c) for c in sent]
    except (SSL.Error, crypto.Error, ValueError) as e:
        logger.debug("pinproxy could not read the served chain for a report: %s", e)
        return []


def _record_leaf(decision: Decision, cert: crypto.X509) -> None:
    """A metric must never change a verdict: an unreadable notAfter is only logged."""
    try:
        metrics.record_upstream_leaf(decision.rule, _not_after(cert))
    except ValueError as e:
        logger.debug("pinproxy could not read the leaf's notAfter: %s", e)


def _not_after(cert: crypto.X509) -> dt.datetime:
    """The certificate's notAfter from pyOpenSSL's GeneralizedTime `YYYYMMDDhhmmssZ` (no
    re-parse of the certificate)."""
    t = cert.get_notAfter() or b""
    return dt.datetime(int(t[0:4]), int(t[4:6]), int(t[6:8]), int(t[8:10]), int(t[10:12]),
                       int(t[12:14]), tzinfo=dt.UTC)


def _verify_error(errno: int, depth: int) -> str:
    return f"OpenSSL rejected the certificate at depth {depth}: {verify_error_text(errno)}"


def _refuse_request(flow: http.HTTPFlow, decision: Decision) -> None:
    """Answer in place of the server. A streamed request body cannot coexist with a response
    set in `requestheaders` (mitmproxy raises), so the body is read and dropped instead."""
    flow.request.stream = False
    flow.response = _refusal_response(decision)


def _refusal_response(decision: Decision) -> http.Response:
    """pinproxy's answer to a refused request: the page and the reason as a header."""
    return http.Response.make(refusal_status(decision), refusal_page(decision), {
        "Content-Type": "text/plain; charset=utf-8",
        "X-Pinproxy-Reason": decision.reason.value,
    })


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



# -- absolute-form requests: pinproxy's page in place of mitmproxy's generic one -----------------

_REGULAR = layers.http.HTTPMode.regular  # the forward proxy's own HTTP layer, not a tunnel's

def _explain_absolute_form_refusals(
        nextlayer: layer.NextLayer,
        refusal: Callable[[connection.Client, connection.Server], Decision | None]) -> None:
    """Put `_RefusalPages` over the regular-mode `HttpLayer` mitmproxy chose for a client
    connection (directly, or under the TLS layer of a client that speaks TLS to the proxy)."""
    parent: layer.Layer | None = None
    current: layer.Layer | None = nextlayer.layer
    while current is not None and not isinstance(current, layers.HttpLayer):
        parent, current = current, getattr(current, "child_layer", None)
    if not isinstance(current, layers.HttpLayer) or current.mode is not _REGULAR:
        return
    pages = _RefusalPages(current, refusal)
    if parent is None:
        nextlayer.layer = pages
    else:
        parent.child_layer = pages  # type: ignore[attr-defined]


class _RefusalPages(layer.Layer):
    """Answers an absolute-form request (`GET https://host/` without CONNECT) whose upstream
    handshake pinproxy refused with pinproxy's page instead of mitmproxy's.

    mitmproxy connects for such a request only after the request hooks ran, so no hook can
    answer it once the check failed: the stream turns the handshake's error string into its
    own 502 page ("Certificate verify failed: ...", written by the HTTP/1 server connection),
    and the `error` hook that comes first cannot change that answer. This layer sits between
    the `HttpLayer` and the connection, sees the commands going out, and replaces that page
    (the first 502 sent to the client after the `error` hook of a flow whose connection
    failed pinproxy's check) with pinproxy's. It decides nothing and logs nothing: the
    refusal was decided, logged, counted and reported by the handshake's verdict.
    Like `NextLayer` it stays out of `context.layers`, so mitmproxy's layer matching is
    unchanged.
    """

    def __init__(self, child: layer.Layer,
                 refusal: Callable[[connection.Client, connection.Server], Decision | None],
                 ) -> None:
        super().__init__(child.context)
        self.context.layers.remove(self)
        self.child_layer = child
        self._refusal = refusal
        self._failed: connection.Server | None = None  # the last server whose TLS failed
        self._page: bytes | None = None  # what replaces mitmproxy's next 502 to the client

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        # Passed through untouched, events and replies alike: this layer never blocks.
        for command in self.child_layer.handle_event(event):
            yield self._pass(command)

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from self.handle_event(event)  # pragma: no cover - handle_event is overridden

    def _pass(self, command: commands.Command) -> commands.Command:
        if isinstance(command, TlsFailedServerHook):
            self._failed = cast(connection.Server, command.data.conn)
        elif isinstance(command, HttpErrorHook):
            self._page = self._refusal_page(command.flow)
        elif (isinstance(command, commands.SendData) and self._page is not None
              and command.connection is self.context.client):
            page, self._page = self._page, None
            if command.data.startswith(b"HTTP/1.1 502 "):  # mitmproxy's page, as expected
                return commands.SendData(command.connection, page)
        return command

    def _refusal_page(self, flow: http.HTTPFlow) -> bytes | None:
        """pinproxy's page, if the flow failed because pinproxy refused its upstream."""
        server, self._failed = self._failed, None
        if server is None or flow.error is None or server.error != flow.error.msg:
            return None
        decision = self._refusal(self.context.client, server)
        if decision is None:
            return None
        response = _refusal_response(decision)
        response.headers["Connection"] = "close"  # mitmproxy closes the connection after it
        if flow.request.method.upper() == "HEAD":
            return bytes(http1.assemble_response_head(response))
        return bytes(http1.assemble_response(response))
