"""The layer that gives absolute-form requests pinproxy's refusal page, driven with real
mitmproxy layers, commands and hooks (the end-to-end proof is tests/test_e2e_absolute_form.py).

These reach what real traffic cannot: a refusal by the deny-on-error guard (internal error),
an upstream failure pinproxy did not cause, a stale failure that belongs to another flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import h11
from mitmproxy import connection, flow, http
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpErrorHook  # type: ignore[attr-defined]
from mitmproxy.proxy.layers.tls import TlsFailedServerHook
from mitmproxy.test import taddons, tflow

from pinproxy.proxy.addon import Pinning, _explain_absolute_form_refusals, _RefusalPages
from tests.test_addon import pinset_file, root_pin, server_of, tls_data

GENERIC = (b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 4\r\n\r\nmitm")  # mitmproxy's page
FAILED = "Certificate verify failed: unspecified certificate verification error"


class Scripted(layer.Layer):
    """A child layer that, on Start, yields the commands an `HttpLayer` yields for a failed
    absolute-form request: the TLS failure, the error hook, the 502 page, the close. Like the
    `HttpLayer`'s, its hooks arrive already claimed by the inner layer that waits for them."""

    def __init__(self, context: Context, script: list[commands.Command]) -> None:
        super().__init__(context)
        self.script = script

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        for command in self.script:
            if command.blocking is True:
                command.blocking = self
            yield command

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from ()


def failed_flow(client: connection.Client, error: str, method: str = "GET") -> http.HTTPFlow:
    failed = tflow.tflow()
    failed.client_conn = client
    failed.request.method = method
    failed.error = flow.Error(error)
    return failed


def sent(addon: Pinning, context: Context, script: list[commands.Command]) -> list[bytes]:
    """What the client is sent when `script` passes through pinproxy's layer."""
    pages = _RefusalPages(Scripted(context, script), addon._refusal)
    return [c.data for c in pages.handle_event(events.Start())
            if isinstance(c, commands.SendData) and c.connection is context.client]


def parse(raw: bytes, method: str = "GET") -> tuple[h11.Response, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "api.example")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    head = conn.next_event()
    assert isinstance(head, h11.Response)
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    return head, body


def test_a_refused_handshake_gets_pinproxys_page(tmp_path: Path) -> None:
    """The deny-on-error guard's refusal (internal error) replaces mitmproxy's page."""
    addon = Pinning()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = tls_data(tctx)
        server = server_of(data)
        server.address = None  # no TLS connection can be built: refused as an internal error
        addon.tls_start_server(data)
        server.error = FAILED  # as mitmproxy's TLS layer records the failed handshake
        client = data.context.client
        for method in ("GET", "HEAD"):
            [page] = sent(addon, data.context, [
                TlsFailedServerHook(data), HttpErrorHook(failed_flow(client, FAILED, method)),
                commands.SendData(client, GENERIC), commands.CloseConnection(client)])
            head, body = parse(page, method)
            headers = dict(head.headers)
            assert head.status_code == 502
            assert headers[b"x-pinproxy-reason"] == b"internal-error"
            assert headers[b"connection"] == b"close"
            assert headers[b"content-type"] == b"text/plain; charset=utf-8"
            assert (b"reason: internal-error" in body) is (method == "GET")


def test_failures_pinproxy_did_not_cause_keep_mitmproxys_page(tmp_path: Path) -> None:
    addon = Pinning()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = tls_data(tctx)
        server, client = server_of(data), data.context.client
        server.error = FAILED
        # no refusal recorded for this server (e.g. it failed before pinproxy's check)
        assert sent(addon, data.context, [
            TlsFailedServerHook(data), HttpErrorHook(failed_flow(client, FAILED)),
            commands.SendData(client, GENERIC)]) == [GENERIC]
        server.address = None
        addon.tls_start_server(data)  # now refused...
        # ...but the flow failed for another reason: not this server's failure
        assert sent(addon, data.context, [
            TlsFailedServerHook(data), HttpErrorHook(failed_flow(client, "connection closed")),
            commands.SendData(client, GENERIC)]) == [GENERIC]
        # an error hook without a TLS failure before it
        assert sent(addon, data.context, [
            HttpErrorHook(failed_flow(client, FAILED)),
            commands.SendData(client, GENERIC)]) == [GENERIC]
        # the next bytes to the client are not a 502 page: left alone
        other = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        assert sent(addon, data.context, [
            TlsFailedServerHook(data), HttpErrorHook(failed_flow(client, FAILED)),
            commands.SendData(client, other), commands.SendData(client, GENERIC)]) == [
            other, GENERIC]


def test_only_the_forward_proxys_http_layer_is_wrapped() -> None:
    with taddons.context() as tctx:  # type: ignore[no-untyped-call]
        client = tflow.tclient_conn()
        for mode, wrapped in ((layers.http.HTTPMode.regular, True),
                              (layers.http.HTTPMode.transparent, False)):
            context = Context(client, tctx.options)
            proxy_mode = layers.modes.HttpProxy(context)
            nextlayer = layer.NextLayer(context)
            http_layer = layers.HttpLayer(context, mode)
            nextlayer.layer = http_layer
            _explain_absolute_form_refusals(nextlayer, lambda c, s: None)
            assert isinstance(nextlayer.layer, _RefusalPages) is wrapped
            # invisible to mitmproxy's layer matching, as NextLayer is
            assert context.layers == [proxy_mode, http_layer]
            # a client speaking TLS to the proxy: the HTTP layer under its TLS layer
            context = Context(client, tctx.options)
            layers.modes.HttpProxy(context)
            nextlayer = layer.NextLayer(context)
            client_tls = layers.ClientTLSLayer(context)
            client_tls.child_layer = layers.HttpLayer(context, mode)
            nextlayer.layer = client_tls
            _explain_absolute_form_refusals(nextlayer, lambda c, s: None)
            assert nextlayer.layer is client_tls
            assert isinstance(cast(layer.Layer, client_tls.child_layer), _RefusalPages) is wrapped
