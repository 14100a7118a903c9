"""The addon's hooks, driven directly with mitmproxy's test helpers (as its own addon tests do).

The end-to-end tests prove the behaviour with real traffic; these reach the paths real traffic
cannot: errors inside the check, a handshake that completes without a verdict, options.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import cast

import pytest
from mitmproxy import connection, exceptions, tls
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons, tflow
from OpenSSL import SSL, crypto
from prometheus_client import REGISTRY

from pinproxy.loader import load_pinset
from pinproxy.pins import certificate_pins
from pinproxy.pinset import Pinset
from pinproxy.proxy.addon import Pinning, _HandshakeCheck
from pinproxy.reloading import CurrentPinset
from tests import certs

OTHER_PIN = "sha256/" + "A" * 43 + "="


def pinset_file(tmp_path: Path, pin: str, unpinned: str = "allow") -> Path:
    path = tmp_path / "pins.yaml"
    path.write_text(f"version: 1\nunpinned: {unpinned}\nhosts:\n"
                    f"  - host: api.example\n    pins: [\"{pin}\"]\n")
    return path


def root_pin() -> str:
    return str(certificate_pins(certs.der_of(certs.pki().root_pem)).spki)


def x509(pem: bytes) -> crypto.X509:
    return crypto.load_certificate(crypto.FILETYPE_PEM, pem)


def server_of(data: tls.TlsData) -> connection.Server:
    return cast(connection.Server, data.conn)


def tls_data(tctx: taddons.context, sni: str = "api.example") -> tls.TlsData:
    client = tflow.tclient_conn()
    client.sni = sni
    server = tflow.tserver_conn()
    server.address = (sni, 443)
    server.sni = sni
    return tls.TlsData(conn=server, context=Context(client, tctx.options))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("ssl_insecure", True, "refuses 'ssl_insecure'"),
    ("ignore_hosts", [".*"], "refuses 'ignore_hosts'"),
    ("allow_hosts", ["example.com"], "refuses 'allow_hosts'"),
    ("mode", ["transparent"], "supports only the regular"),
])
def test_bypassing_options_are_refused(tmp_path: Path, option: str, value: object,
                                       message: str) -> None:
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(addon, **{option: value})


def test_bad_pinset_is_refused_and_the_old_one_stays(tmp_path: Path) -> None:
    addon = Pinning()
    good = pinset_file(tmp_path, root_pin())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(good))
        loaded = addon.pinset
        bad = tmp_path / "bad.yaml"
        bad.write_text("version: 1\nhosts: [\n")
        with pytest.raises(exceptions.OptionsError, match="previous pinset stays in force"):
            tctx.configure(addon, pinset=str(bad))
        assert addon.pinset is loaded


def test_verify_callback_keeps_openssls_verdict(tmp_path: Path) -> None:
    pki = certs.pki()
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = tls_data(tctx)
        check = _HandshakeCheck(addon, data, ["api.example"])
        root, leaf = x509(pki.root_pem), x509(pki.leaf_pem)
        assert check(SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD)), root, 0, 1, 1)
        # OpenSSL says no at depth 0: refused, even though the root is pinned
        assert not check(SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD)), leaf, 62, 0, 0)
        refusal = addon._refusal(data.context.client, server_of(data))
        assert refusal is not None
        assert refusal.reason == "chain-not-verified" and "hostname mismatch" in refusal.detail


def test_verify_callback_allows_a_pinned_chain_and_refuses_another(tmp_path: Path) -> None:
    pki = certs.pki()
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        rogue = certs.pki("rogue")
        for root_pem, leaf_pem, allowed in ((pki.root_pem, pki.leaf_pem, True),
                                            (rogue.root_pem, rogue.leaf_pem, False)):
            data = tls_data(tctx)
            check = _HandshakeCheck(addon, data, ["api.example"])
            conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
            assert check(conn, x509(root_pem), 0, 1, 1)
            assert check(conn, x509(leaf_pem), 0, 0, 1) is allowed
            assert (data.conn in addon._checked) is allowed


def test_an_error_inside_the_check_refuses(tmp_path: Path) -> None:
    pki = certs.pki()
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))

        class BrokenPinset(Pinset):
            def candidates(self, host: str):  # type: ignore[no-untyped-def]
                raise RuntimeError("boom")

        assert addon.pinset is not None
        addon.pinsets.pinset = BrokenPinset(addon.pinset.rules, addon.pinset.source)
        data = tls_data(tctx)
        check = _HandshakeCheck(addon, data, ["api.example"])
        conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
        assert not check(conn, x509(pki.leaf_pem), 0, 0, 1)
        refusal = addon._refusal(data.context.client, server_of(data))
        assert refusal is not None
        assert refusal.reason == "internal-error" and "boom" in refusal.detail


def test_a_handshake_without_a_verdict_is_refused(tmp_path: Path) -> None:
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = tls_data(tctx)
        addon.tls_established_server(data)  # e.g. a resumed session: no verify callback ran
        flow = tflow.tflow()
        flow.client_conn, flow.server_conn = data.context.client, server_of(data)
        addon.requestheaders(flow)
        assert flow.response is not None and flow.response.status_code == 502
        assert b"without a pin check" in (flow.response.content or b"")


def test_a_refusal_outlives_the_server_connection_and_not_the_client(tmp_path: Path) -> None:
    """Eager mode: the refused server connection is closed before the client's request comes,
    which must still find the refusal; once the client connection is gone, so is its state."""
    pki = certs.pki("rogue")
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = tls_data(tctx)
        check = _HandshakeCheck(addon, data, ["api.example"])
        conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
        assert check(conn, x509(pki.root_pem), 0, 1, 1)
        assert not check(conn, x509(pki.leaf_pem), 0, 0, 1)
        client, server_id = data.context.client, data.conn.id
        flow = tflow.tflow()
        flow.client_conn = client
        flow.server_conn = tflow.tserver_conn()  # the closed one, as the request's flow sees it
        flow.server_conn.id = server_id
        addon.requestheaders(flow)
        assert flow.response is not None and flow.response.status_code == 502
        assert flow.response.headers["X-Pinproxy-Reason"] == "pin-mismatch"
        # the refusal is this client's: another client's request on the same id is not refused
        other = tflow.tflow()
        other.server_conn.id = server_id
        other.request.host = "unpinned.example"
        other.request.headers["Host"] = "unpinned.example"
        addon.requestheaders(other)
        assert other.response is None
        assert len(addon._refusals) == 1 and len(addon._checked) == 0
        del data, check, flow, client
        gc.collect()
        assert len(addon._refusals) == 0  # no clean-up hook: it went with the client


def test_a_checked_server_is_forgotten_with_its_connection(tmp_path: Path) -> None:
    pki = certs.pki()
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = tls_data(tctx)
        check = _HandshakeCheck(addon, data, ["api.example"])
        conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
        assert check(conn, x509(pki.root_pem), 0, 1, 1)
        assert check(conn, x509(pki.leaf_pem), 0, 0, 1)
        addon.tls_established_server(data)  # checked: nothing refused
        assert addon._refusal(data.context.client, server_of(data)) is None
        assert len(addon._checked) == 1
        del data, check
        gc.collect()
        assert len(addon._checked) == 0


def test_no_ssl_connection_means_a_failing_one(tmp_path: Path) -> None:
    addon = Pinning()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = tls_data(tctx)
        server_of(data).address = None  # tlsconfig cannot build a connection without an address
        addon.tls_start_server(data)
        assert data.ssl_conn is not None  # a connection whose handshake can only fail
        refusal = addon._refusal(data.context.client, server_of(data))
        assert refusal is not None and refusal.reason == "internal-error"


# -- reloading in the background (SIGHUP) ------------------------------------------------------

def test_a_background_reload_installs_the_new_pinset_and_merges_requests(
        tmp_path: Path) -> None:
    loads: list[str] = []

    def counted_load(name: str) -> Pinset:
        loads.append(name)
        return load_pinset(name)

    addon = Pinning(load=counted_load)
    path = pinset_file(tmp_path, root_pin())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(path))
        first = addon.pinset
        pinset_file(tmp_path, OTHER_PIN)
        loads.clear()

        async def three_signals() -> None:
            await asyncio.gather(*(addon.reload_in_background() for _ in range(3)))

        asyncio.run(three_signals())
        assert addon.pinset is not first and addon.pinset is not None
        assert [str(pin) for pin in addon.pinset.rules[0].pins] == [OTHER_PIN]
        assert loads == [str(path)] * 2  # the first, and one for the two asked meanwhile


def test_a_bad_file_in_a_background_reload_keeps_the_old_pinset(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    addon = Pinning()
    path = pinset_file(tmp_path, root_pin())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pinset=str(path))
        loaded = addon.pinset
        path.write_text("version: 1\nhosts: [\n")
        asyncio.run(addon.reload_in_background())
        assert addon.pinset is loaded
    assert f"pinproxy pinset reload failed: {path}:3: not valid YAML" in caplog.text
    assert caplog.text.rstrip().endswith("the previous pinset stays in force")


# -- revocation: open connections decided again after a reload ---------------------------------

def checked_connection(addon: Pinning, tctx: taddons.context,
                       chain: tuple[bytes, ...] | None = None) -> tls.TlsData:
    """A server connection whose handshake passed the check (root, then leaf), left open."""
    pki = certs.pki()
    data = tls_data(tctx)
    check = _HandshakeCheck(addon, data, ["api.example"])
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
    root, leaf = chain or (pki.root_pem, pki.leaf_pem)
    assert check(conn, x509(root), 0, 1, 1)
    assert check(conn, x509(leaf), 0, 0, 1)
    data.context.client.state = data.conn.state = connection.ConnectionState.OPEN
    return data


def samples(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_reload_that_revokes_the_pin_refuses_the_open_connection(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    addon = Pinning()
    path = pinset_file(tmp_path, root_pin())
    with taddons.context(addon, Proxyserver()) as tctx:
        tctx.configure(addon, pinset=str(path))
        data = checked_connection(addon, tctx)
        assert addon._refusal(data.context.client, server_of(data)) is None
        blocked = samples("pinproxy_checks_total", action="blocked", reason="pin-mismatch")
        pinset_file(tmp_path, OTHER_PIN)
        asyncio.run(addon.reload_in_background())

        refusal = addon._refusal(data.context.client, server_of(data))
        assert refusal is not None and refusal.reason == "pin-mismatch"
        assert refusal.detail == "re-checked after a pinset reload"
        assert data.conn not in addon._checked
        assert samples("pinproxy_checks_total", action="blocked",
                       reason="pin-mismatch") == blocked + 1
        flow = tflow.tflow()  # the next request of the client's tunnel
        flow.client_conn, flow.server_conn = data.context.client, server_of(data)
        addon.requestheaders(flow)
        assert flow.response is not None and flow.response.status_code == 502
    assert caplog.text.count("re-checked after a pinset reload") == 1


def test_a_reload_that_keeps_the_pin_leaves_the_connection_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    addon = Pinning()
    path = pinset_file(tmp_path, root_pin())
    with taddons.context(addon, Proxyserver()) as tctx:
        tctx.configure(addon, pinset=str(path))
        data = checked_connection(addon, tctx)
        another_rule = f"  - host: other.example\n    pins: [\"{OTHER_PIN}\"]\n"
        path.write_text(path.read_text() + another_rule)
        addon.reload()
        assert addon._refusal(data.context.client, server_of(data)) is None
        assert data.conn in addon._checked
    assert "re-checked" not in caplog.text


def test_a_reload_through_an_option_change_rechecks_too(tmp_path: Path) -> None:
    addon = Pinning()
    with taddons.context(addon, Proxyserver()) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = checked_connection(addon, tctx)
        other = tmp_path / "other"
        other.mkdir()
        tctx.configure(addon, pinset=str(pinset_file(other, OTHER_PIN)))
        refusal = addon._refusal(data.context.client, server_of(data))
        assert refusal is not None and refusal.reason == "pin-mismatch"


def test_report_mode_keeps_the_connection_and_reports_it_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    addon = Pinning()
    path = pinset_file(tmp_path, root_pin())
    with taddons.context(addon, Proxyserver()) as tctx:
        tctx.configure(addon, pinset=str(path),
                       pinset_report_log=str(tmp_path / "violations.jsonl"))
        data = checked_connection(addon, tctx)
        reported = path.read_text().replace("version: 1\n", "version: 1\nmode: report\n")
        path.write_text(reported.replace(root_pin(), OTHER_PIN))
        addon.reload()
        path.write_text(path.read_text() + "# the same verdict again\n")
        addon.reload()
        assert addon._refusal(data.context.client, server_of(data)) is None
        assert data.conn in addon._checked
    records = (tmp_path / "violations.jsonl").read_text().splitlines()
    assert len(records) == 1 and '"action":"reported"' in records[0]
    assert caplog.text.count("action=reported") == 1


def test_an_error_in_the_recheck_refuses_that_connection(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    addon = Pinning()
    path = pinset_file(tmp_path, root_pin())
    with taddons.context(addon, Proxyserver()) as tctx:
        tctx.configure(addon, pinset=str(path))
        data = checked_connection(addon, tctx)

        class BrokenPinset(Pinset):
            def candidates(self, host: str):  # type: ignore[no-untyped-def]
                raise RuntimeError("boom")

        addon.pinsets = CurrentPinset(
            lambda p: BrokenPinset(load_pinset(p).rules, p), on_install=addon._installed)
        addon.reload()
        refusal = addon._refusal(data.context.client, server_of(data))
        assert refusal is not None
        assert refusal.reason == "internal-error" and "boom" in refusal.detail
    assert "could not re-check a connection after the reload: boom; closing it" in caplog.text


def test_a_failed_close_still_refuses_the_next_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    addon = Pinning()
    with taddons.context(addon) as tctx:  # no proxyserver addon: nothing can be closed
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = checked_connection(addon, tctx)
        other = tmp_path / "other"
        other.mkdir()
        tctx.configure(addon, pinset=str(pinset_file(other, OTHER_PIN)))
        refusal = addon._refusal(data.context.client, server_of(data))
        assert refusal is not None and refusal.reason == "pin-mismatch"
    assert "could not close a connection refused after the reload" in caplog.text


def test_a_closed_client_is_not_rechecked(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    addon = Pinning()
    with taddons.context(addon, Proxyserver()) as tctx:
        tctx.configure(addon, pinset=str(pinset_file(tmp_path, root_pin())))
        data = checked_connection(addon, tctx)
        data.context.client.state = connection.ConnectionState.CLOSED
        other = tmp_path / "other"
        other.mkdir()
        tctx.configure(addon, pinset=str(pinset_file(other, OTHER_PIN)))
        assert addon._refusal(data.context.client, server_of(data)) is None
    assert "re-checked" not in caplog.text
