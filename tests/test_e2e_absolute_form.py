"""End to end: absolute-form requests (`GET https://host/path` sent to the proxy, no CONNECT).

mitmproxy opens the upstream TLS connection for such a request itself, after the request hooks
ran; when pinproxy's check fails that handshake, mitmproxy answers with its own generic page
("Certificate verify failed") unless pinproxy replaces it. Every refusal here must carry
pinproxy's 502 page (host, reason, pins) and `X-Pinproxy-Reason`, and the refused upstream must
receive not one byte; the twins (a matching pin, report mode) are served.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest
import trustme

from tests.certs import TrustedPki, leaf_pin
from tests.conftest import Serve
from tests.proxy import Proxy, curl_plain, report_records, start_pinproxy
from tests.upstream import PlainServer, UpstreamServer, wait_for

pytestmark = pytest.mark.e2e

PINNED = "127.0.0.2"  # pinned to the genuine root
REPORTED = "127.0.0.3"  # pinned to the genuine root, report mode
UNPINNED = "127.0.0.4"  # in no rule: refused under `unpinned: block`


@pytest.fixture(scope="module")
def leaves(pki: TrustedPki) -> dict[str, trustme.LeafCert]:
    """Certificates for the three addresses: genuine (pinned root), rogue and untrusted."""
    names = (PINNED, REPORTED, UNPINNED)
    return {"genuine": pki.issue(pki.intermediate, *names),
            "rogue": pki.issue(pki.rogue_root, *names),
            "untrusted": trustme.CA().issue_cert(*names)}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, pki: TrustedPki,
          confdir: Path) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("absolute-form")
    pinset = folder / "pins.yaml"
    pinset.write_text(f"""\
version: 1
mode: enforce
unpinned: block
hosts:
  - host: {PINNED}
    pins: ["{pki.root_pin}"]
  - host: {REPORTED}
    mode: report
    pins: ["{pki.root_pin}"]
""")
    with start_pinproxy(pinset, confdir, pki.ca_bundle,
                        report_log=folder / "violations.jsonl") as running:
        yield running


def assert_untouched(server: UpstreamServer | PlainServer) -> None:
    """The server got not one application byte (wait until its connections are closed)."""
    wait_for(lambda: server.connections_closed >= server.connections_accepted)
    assert server.received_bytes() == b""
    assert server.requests == []


def absolute_form(proxy: Proxy, *urls: str) -> list[tuple[h11.Response, bytes]]:
    """Send `GET <url>` for each URL in turn on one keep-alive connection to the proxy; the
    responses (head and body) until the first that closes the connection."""
    answers: list[tuple[h11.Response, bytes]] = []
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        conn = h11.Connection(h11.CLIENT)
        for url in urls:
            authority = url.split("/")[2]
            sock.sendall(conn.send(h11.Request(method="GET", target=url,
                                               headers=[("Host", authority)])))
            sock.sendall(conn.send(h11.EndOfMessage()))
            head: h11.Response | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert head is not None
            answers.append((head, body))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()
    return answers


def header(response: h11.Response, name: bytes) -> str | None:
    return next((v.decode() for k, v in response.headers if k == name), None)


def assert_refusal_page(response: h11.Response, body: bytes, host: str, reason: str) -> None:
    text = body.decode()
    assert response.status_code == 502, text
    assert header(response, b"x-pinproxy-reason") == reason, text
    assert header(response, b"content-type") == "text/plain; charset=utf-8"
    assert f"pinproxy refused the connection to {host}" in text
    assert f"reason: {reason}" in text
    assert "Certificate verify failed" not in text  # mitmproxy's generic page


def test_matching_pin_is_served(proxy: Proxy, serve: Serve,
                                leaves: dict[str, trustme.LeafCert]) -> None:
    server = serve(leaves["genuine"], host=PINNED)
    [(response, body)] = absolute_form(proxy, f"https://{PINNED}:{server.port}/hello")
    assert (response.status_code, body) == (200, b"hello from upstream upstream\n")
    assert [r.path for r in server.requests] == ["/hello"]


def test_pin_mismatch_gets_the_refusal_page(proxy: Proxy, serve: Serve,
                                            leaves: dict[str, trustme.LeafCert]) -> None:
    server = serve(leaves["rogue"], host=PINNED)
    mark = len(proxy.output())
    [(response, body)] = absolute_form(proxy, f"https://{PINNED}:{server.port}/secret")
    assert_refusal_page(response, body, PINNED, "pin-mismatch")
    assert "verified chain (0 = leaf):" in body.decode()
    assert leaf_pin(leaves["rogue"]) in body.decode()  # the pins served, by position
    assert_untouched(server)
    assert server.handshakes_completed == 0
    # logged and counted once, by the handshake's verdict; the page adds no second line
    proxy.wait_for_output(rf"action=blocked host={PINNED} port={server.port} "
                          r"reason=pin-mismatch")
    assert proxy.log_lines_since(mark).count(f"port={server.port} reason=pin-mismatch") == 1


def test_unpinned_host_under_block_gets_the_refusal_page(
        proxy: Proxy, serve: Serve, leaves: dict[str, trustme.LeafCert]) -> None:
    server = serve(leaves["genuine"], host=UNPINNED)
    [(response, body)] = absolute_form(proxy, f"https://{UNPINNED}:{server.port}/")
    assert_refusal_page(response, body, UNPINNED, "host-not-pinned")
    assert_untouched(server)


def test_chain_not_verified_gets_the_refusal_page(
        proxy: Proxy, serve: Serve, leaves: dict[str, trustme.LeafCert]) -> None:
    server = serve(leaves["untrusted"], host=PINNED)
    [(response, body)] = absolute_form(proxy, f"https://{PINNED}:{server.port}/")
    assert_refusal_page(response, body, PINNED, "chain-not-verified")
    assert "OpenSSL rejected the certificate" in body.decode()
    assert_untouched(server)


def test_report_mode_serves_and_reports(proxy: Proxy, serve: Serve,
                                        leaves: dict[str, trustme.LeafCert]) -> None:
    server = serve(leaves["rogue"], host=REPORTED)
    [(response, _)] = absolute_form(proxy, f"https://{REPORTED}:{server.port}/reported")
    assert response.status_code == 200
    assert [r.path for r in server.requests] == ["/reported"]
    record = wait_for(lambda: next((r for r in report_records(proxy)
                                    if r["port"] == server.port), None))
    assert record["action"] == "reported" and record["reason"] == "pin-mismatch"


def test_keep_alive_second_request_to_a_refused_host(
        proxy: Proxy, serve: Serve, leaves: dict[str, trustme.LeafCert]) -> None:
    """One client connection: served by a pinned host, then refused by another host."""
    genuine = serve(leaves["genuine"], host=PINNED)
    rogue = serve(leaves["rogue"], host=PINNED)
    answers = absolute_form(proxy, f"https://{PINNED}:{genuine.port}/first",
                            f"https://{PINNED}:{rogue.port}/second")
    assert [response.status_code for response, _ in answers] == [200, 502]
    assert_refusal_page(*answers[1], PINNED, "pin-mismatch")
    assert [r.path for r in genuine.requests] == ["/first"]
    assert_untouched(rogue)


def test_refused_then_served_on_a_new_connection(
        proxy: Proxy, serve: Serve, leaves: dict[str, trustme.LeafCert]) -> None:
    """The refusal closes its client connection; the next one is judged on its own."""
    rogue = serve(leaves["rogue"], host=PINNED)
    genuine = serve(leaves["genuine"], host=PINNED)
    answers = absolute_form(proxy, f"https://{PINNED}:{rogue.port}/first",
                            f"https://{PINNED}:{genuine.port}/never-sent")
    assert len(answers) == 1
    assert_refusal_page(*answers[0], PINNED, "pin-mismatch")
    [(response, _)] = absolute_form(proxy, f"https://{PINNED}:{genuine.port}/second")
    assert response.status_code == 200
    assert_untouched(rogue)
    assert [r.path for r in genuine.requests] == ["/second"]


def test_curl_request_target(proxy: Proxy, serve: Serve,
                             leaves: dict[str, trustme.LeafCert]) -> None:
    """curl speaking to the proxy as a server, with an absolute-form target: a real client's
    bytes, refused and served."""
    curl = shutil.which("curl")
    assert curl, "curl is required (installed by .ci/run)"
    for leaf, status in (("rogue", 502), ("genuine", 200)):
        server = serve(leaves[leaf], host=PINNED)
        authority = f"{PINNED}:{server.port}"
        done = subprocess.run(
            [curl, "--silent", "--show-error", "--max-time", "20", "--include",
             "--request-target", f"https://{authority}/curl", "--header", f"Host: {authority}",
             f"{proxy.url}/"], capture_output=True, text=True, timeout=25, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"HTTP/1.1 {status} "), done.stdout
        if status == 502:
            assert "x-pinproxy-reason: pin-mismatch" in done.stdout.lower()
            assert f"pinproxy refused the connection to {PINNED}" in done.stdout
            assert_untouched(server)
        else:
            assert [r.path for r in server.requests] == ["/curl"]


def test_plain_http_to_a_pinned_host_gets_the_refusal_page(proxy: Proxy) -> None:
    """Absolute-form `GET http://` to a pinned host: refused before any connection."""
    with PlainServer(host=PINNED) as server:
        [(response, body)] = absolute_form(proxy, f"http://{PINNED}:{server.port}/")
        assert_refusal_page(response, body, PINNED, "plaintext-to-pinned-host")
        assert server.connections_accepted == 0
        result = curl_plain(proxy, f"http://{PINNED}:{server.port}/")
        assert result.status == 502 and "reason: plaintext-to-pinned-host" in result.body
