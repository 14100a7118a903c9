"""End to end: `pinproxy run --pinset-url` against a real loopback HTTPS pinset server.

The server (trustme certificate, the genuine hierarchy) serves `pins.yaml` and
`pins.yaml.minisig`; real `pinproxy run` processes fetch, verify and enforce them, and curl goes
through the proxy to a real upstream. Each refusal (bad signature, rollback, same serial, stale)
is checked against its twin, a good pinset that is put in force; so are the start-ups with the
server down, with a cache (enforced) and without one (every connection refused until the
server answers).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import h11
import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from pinproxy import minisign
from pinproxy.cli import main
from tests.certs import TrustedPki, leaf_pin
from tests.conftest import Serve
from tests.proxy import Proxy, curl, pinproxy_command, start
from tests.upstream import UpstreamServer, _Stream, wait_for

pytestmark = pytest.mark.e2e

KEY = minisign.generate()
OTHER_KEY = minisign.generate()
FUTURE = "2099-01-01T00:00:00Z"


class PinsetServer(UpstreamServer):
    """HTTPS serving `files` by path (404 otherwise); `publish` swaps them. On 127.0.0.2: the
    upstream of the proxied traffic is 127.0.0.1, which the pinset must not cover."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        super().__init__(cert, "http1", name="pinsets", host="127.0.0.2")
        self.files: dict[str, bytes] = {}

    def publish(self, text: str, key: minisign.SecretKey = KEY,
                signature: bytes | None = None) -> None:
        data = text.encode()
        sig = signature or minisign.sign(key, data, "test").file_text().encode()
        self.files = {"/pins.yaml": data, "/pins.yaml.minisig": sig}  # one reference swapped

    def _serve(self, conn: _Stream) -> None:
        http = h11.Connection(h11.SERVER)
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(self._recv(conn))
            elif isinstance(event, h11.Request):
                body = self.files.get(event.target.decode())
                status = 200 if body is not None else 404
                body = body if body is not None else b"not found\n"
                conn.sendall(http.send(h11.Response(status_code=status, headers=[
                    ("content-length", str(len(body))), ("connection", "close")])))
                conn.sendall(http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))
                return
            else:
                return


def pinset_text(pki: TrustedPki, good_leaf: trustme.LeafCert, serial: int,
                leaf_pins: str | None = None, valid_until: str = FUTURE) -> str:
    """`leaf.pinned.test` pinned (to the genuine leaf unless `leaf_pins`), every other host
    blocked but the distribution host 127.0.0.2, pinned to the genuine root: the pinset pins
    its own distribution point."""
    return f"""\
version: 1
serial: {serial}
valid_until: {valid_until}
unpinned: block
hosts:
  - host: leaf.pinned.test
    pins: [{leaf_pins or f'"{leaf_pin(good_leaf)}"'}]
  - host: 127.0.0.2
    pins: ["{pki.root_pin}"]
"""


@pytest.fixture
def pinsets(good_leaf: trustme.LeafCert) -> Iterator[PinsetServer]:
    server = PinsetServer(good_leaf)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_signed(url: str, confdir: Path, pki: TrustedPki, *extra: str,
                 key: str = KEY.public_key.text) -> Proxy:
    return start(pinproxy_command(
        "run", "--pinset-url", url, "--pinset-pubkey", key, "--listen-port", "0",
        "--confdir", str(confdir), "--upstream-ca", str(pki.ca_bundle),
        "--admin-listen", "127.0.0.1:0", *extra), confdir)


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    text = httpx.get(f"{proxy.admin_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def fetched(proxy: Proxy, result: str, count: float = 1) -> None:
    wait_for(lambda: metric(proxy, "pinproxy_pinset_fetches_total", result=result) >= count,
             timeout=10)


def status(proxy: Proxy, name: str, port: int) -> int:
    return curl(proxy, name, port, timeout=10).status


def test_a_signed_pinset_is_enforced_refusals_keep_it_and_a_newer_one_takes_over(
        pinsets: PinsetServer, serve: Serve, confdir: Path, pki: TrustedPki,
        good_leaf: trustme.LeafCert, tmp_path: Path) -> None:
    upstream = serve(good_leaf)
    pinsets.publish(pinset_text(pki, good_leaf, serial=5))
    cache = tmp_path / "cache"
    with start_signed(f"{pinsets.url}/pins.yaml", confdir, pki, "--pinset-cache", str(cache),
                      "--pinset-refresh", "1") as proxy:
        fetched(proxy, "accepted")
        wait_for(lambda: httpx.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200)
        # enforced: the pinned host passes, a host no rule covers is blocked
        assert status(proxy, "leaf.pinned.test", upstream.port) == 200
        assert status(proxy, "other.test", upstream.port) == 502
        assert metric(proxy, "pinproxy_pinset_serial") == 5
        assert metric(proxy, "pinproxy_pinset_valid_until_timestamp_seconds") == (
            dt.datetime(2099, 1, 1, tzinfo=dt.UTC).timestamp())
        shown = httpx.get(f"{proxy.admin_url}/pinset", timeout=5).json()
        assert (shown["source"], shown["serial"]) == (f"{pinsets.url}/pins.yaml", 5)
        # the cache holds what is in force, and verifies with the real minisign too
        assert (cache / "pins.yaml").exists() is False
        assert (cache / "pinset.yaml").read_bytes() == pinsets.files["/pins.yaml"]
        _minisign_verifies(cache / "pinset.yaml", tmp_path)

        # each refusal keeps the last good pinset (the leaf still passes), logged and counted
        refused_pins = f'"{pki.rogue_root_pin}"'  # would refuse leaf.pinned.test
        steps: list[tuple[str, Callable[[], None], str]] = [
            ("bad-signature", lambda: pinsets.publish(
                pinset_text(pki, good_leaf, 6, refused_pins), key=OTHER_KEY),
             f"signature key id {OTHER_KEY.id_text} is not the public key's {KEY.id_text}"),
            ("bad-signature", lambda: pinsets.publish(
                pinset_text(pki, good_leaf, 6, refused_pins),
                signature=minisign.sign(KEY, b"other", "c").file_text().encode()),
             "bad signature: the data does not match"),
            ("rollback", lambda: pinsets.publish(pinset_text(pki, good_leaf, 4, refused_pins)),
             "serial 4 is lower than the serial in force (5): refused as a rollback"),
            ("same-serial", lambda: pinsets.publish(pinset_text(pki, good_leaf, 5,
                                                                refused_pins)),
             "serial 5 is the serial in force but the content differs"),
            ("stale", lambda: pinsets.publish(pinset_text(
                pki, good_leaf, 6, refused_pins, valid_until="2020-01-01T00:00:00Z")),
             "stale: its 'valid_until' (2020-01-01T00:00:00+00:00) has passed"),
        ]
        for result, publish, logged in steps:
            before = metric(proxy, "pinproxy_pinset_fetches_total", result=result)
            publish()
            proxy.reload()  # SIGHUP fetches at once
            fetched(proxy, result, before + 1)
            assert logged in proxy.output()
            assert status(proxy, "leaf.pinned.test", upstream.port) == 200
            assert metric(proxy, "pinproxy_pinset_serial") == 5
        assert "the pinset in force stays" in proxy.output()

        # the twin: a newer good pinset is picked up at the next refresh, without a signal
        pinsets.publish(pinset_text(pki, good_leaf, 6, refused_pins))
        fetched(proxy, "accepted", 2)
        assert status(proxy, "leaf.pinned.test", upstream.port) == 502
        assert metric(proxy, "pinproxy_pinset_serial") == 6
        assert (cache / "pinset.yaml").read_bytes() == pinsets.files["/pins.yaml"]


def _minisign_verifies(path: Path, tmp_path: Path) -> None:
    minisign_path = shutil.which("minisign")
    assert minisign_path, "minisign is required (installed by .ci/run)"
    public = tmp_path / "key.pub"
    public.write_text(KEY.public_key.file_text())
    done = subprocess.run([minisign_path, "-V", "-p", str(public), "-m", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_the_distribution_host_must_pass_the_pinset_in_force(
        pinsets: PinsetServer, confdir: Path, pki: TrustedPki,
        good_leaf: trustme.LeafCert) -> None:
    """A pinset that pins 127.0.0.2 to another key: the next fetch fails the pin check."""
    pinsets.publish(pinset_text(pki, good_leaf, 1).replace(
        f'pins: ["{pki.root_pin}"]', f'pins: ["{pki.rogue_root_pin}"]'))
    with start_signed(f"{pinsets.url}/pins.yaml", confdir, pki) as proxy:
        fetched(proxy, "accepted")
        pinsets.publish(pinset_text(pki, good_leaf, 2))
        proxy.reload()
        fetched(proxy, "fetch-error")
        assert "the distribution host fails the pinset in force: pin-mismatch" in proxy.output()
        assert metric(proxy, "pinproxy_pinset_serial") == 1


def write_cache(cache: Path, text: str, key: minisign.SecretKey = KEY) -> None:
    cache.mkdir()
    data = text.encode()
    (cache / "pinset.yaml").write_bytes(data)
    (cache / "pinset.yaml.minisig").write_text(minisign.sign(key, data, "c").file_text())


@contextlib.contextmanager
def closed_port_url() -> Iterator[str]:
    """An https URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield f"https://127.0.0.1:{sock.getsockname()[1]}/pins.yaml"


@pytest.mark.parametrize("cache_key", [KEY, OTHER_KEY], ids=["good-cache", "cache-of-other-key"])
def test_server_down_at_start_up_with_a_cache(
        serve: Serve, confdir: Path, pki: TrustedPki, good_leaf: trustme.LeafCert,
        tmp_path: Path, cache_key: minisign.SecretKey) -> None:
    upstream = serve(good_leaf)
    cache = tmp_path / "cache"
    write_cache(cache, pinset_text(pki, good_leaf, 3), cache_key)
    with closed_port_url() as url, start_signed(url, confdir, pki, "--pinset-cache",
                                                str(cache)) as proxy:
        fetched(proxy, "fetch-error")
        ready = httpx.get(f"{proxy.admin_url}/readyz", timeout=5)
        if cache_key is KEY:  # the cache is verified again and enforced
            assert ready.status_code == 200
            assert status(proxy, "leaf.pinned.test", upstream.port) == 200
            assert status(proxy, "other.test", upstream.port) == 502
            assert "the pinset in force stays" in proxy.output()
        else:  # a cache that does not verify is refused: nothing in force, nothing passes
            assert "refused the cached pinset" in proxy.output()
            assert ready.status_code == 503
            assert status(proxy, "leaf.pinned.test", upstream.port) == 502
        if cache_key is not KEY:
            assert upstream.requests == []


def test_server_down_at_start_up_without_a_cache_refuses_until_it_answers(
        pinsets: PinsetServer, serve: Serve, confdir: Path, pki: TrustedPki,
        good_leaf: trustme.LeafCert) -> None:
    upstream = serve(good_leaf)
    with start_signed(f"{pinsets.url}/pins.yaml", confdir, pki,  # 404: no pinset yet
                      "--pinset-refresh", "2") as proxy:  # retries capped at 2 s
        fetched(proxy, "fetch-error")
        assert "NO PINSET: refusing every connection" in proxy.output()
        ready = httpx.get(f"{proxy.admin_url}/readyz", timeout=5)
        assert ready.status_code == 503
        assert "could not fetch the pinset" in ready.text and "HTTP 404" in ready.text
        assert status(proxy, "leaf.pinned.test", upstream.port) == 502
        assert upstream.requests == []
        # the twin: once the server answers, the retry (with backoff) puts the pinset in force
        pinsets.publish(pinset_text(pki, good_leaf, 1))
        fetched(proxy, "accepted")
        assert httpx.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200
        assert status(proxy, "leaf.pinned.test", upstream.port) == 200


@pytest.mark.parametrize(("args", "error"), [
    (["--pinset-url", "https://127.0.0.1/p.yaml"],
     "--pinset-url needs --pinset-pubkey"),
    (["--pinset-url", "http://127.0.0.1/p.yaml", "--pinset-pubkey", KEY.public_key.text],
     "not an https:// URL"),
    (["--pinset-url", "https://127.0.0.1/p.yaml", "--pinset-pubkey", "RWQnope"],
     "--pinset-pubkey: malformed public key"),
    (["--pinset-url", "https://127.0.0.1/p.yaml", "--pinset-pubkey", "@/nonexistent/k.pub"],
     "--pinset-pubkey: /nonexistent/k.pub: cannot read public key"),
    (["--pinset", "config/pins.yaml", "--pinset-url", "https://127.0.0.1/p.yaml",
      "--pinset-pubkey", KEY.public_key.text],
     "--pinset and --pinset-url are two sources of pins"),
    (["--pinset-pubkey", KEY.public_key.text], "--pinset-pubkey only applies with --pinset-url"),
    (["--on-stale", "block"], "--on-stale only applies with --pinset-url"),
    (["--pinset-url", "https://127.0.0.1/p.yaml", "--pinset-pubkey", KEY.public_key.text,
      "--on-stale", "ignore"], "'ignore' is not one of keep, report, block"),
    (["--pinset-url", "https://127.0.0.1/p.yaml", "--pinset-pubkey", KEY.public_key.text,
      "--pinset-refresh", "0.5"], "'0.5' is not a number of seconds (1 to 86400)"),
])
def test_bad_signed_pinset_flags_are_one_line(args: list[str], error: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with contextlib.suppress(SystemExit):
        assert main(["run", *args]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage, if any
    assert error in last, last


def test_each_worker_fetches_and_enforces(pinsets: PinsetServer, serve: Serve, confdir: Path,
                                          pki: TrustedPki, good_leaf: trustme.LeafCert,
                                          tmp_path: Path) -> None:
    from tests.test_workers import admin_get, sample

    upstream = serve(good_leaf)
    pinsets.publish(pinset_text(pki, good_leaf, 2))
    with start_signed(f"{pinsets.url}/pins.yaml", confdir, pki, "--workers", "2",
                      "--pinset-cache", str(tmp_path / "cache")) as proxy:
        wait_for(lambda: admin_get(proxy, "/readyz")[0] == 200, timeout=20)
        # two fetches, one per worker: both accepted, or one "unchanged" when the other
        # worker's cache was there first
        wait_for(lambda: sum(sample(admin_get(proxy, "/metrics")[1],
                                    "pinproxy_pinset_fetches_total", result=result)
                             for result in ("accepted", "unchanged")) == 2, timeout=10)
        for _ in range(4):  # whichever worker takes the connection enforces the pinset
            assert status(proxy, "leaf.pinned.test", upstream.port) == 200
            assert status(proxy, "other.test", upstream.port) == 502
        assert (tmp_path / "cache" / "pinset.yaml").read_bytes() == pinsets.files["/pins.yaml"]


@pytest.mark.parametrize("on_stale", ["keep", "report", "block"])
def test_on_stale(pinsets: PinsetServer, serve: Serve, confdir: Path, pki: TrustedPki,
                  good_leaf: trustme.LeafCert, on_stale: str) -> None:
    """The pinset in force passes its valid_until and the server keeps serving that same
    pinset: --on-stale decides; a fresh pinset ends it (the twin)."""
    upstream = serve(good_leaf)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)).isoformat(timespec="seconds")
    pinsets.publish(pinset_text(pki, good_leaf, 1, valid_until=soon))
    with start_signed(f"{pinsets.url}/pins.yaml", confdir, pki, "--on-stale", on_stale) as proxy:
        fetched(proxy, "accepted")
        assert status(proxy, "leaf.pinned.test", upstream.port) == 200  # not stale yet
        assert metric(proxy, "pinproxy_pinset_stale") == 0
        # at valid_until the proxy fetches again, gets the same pinset, and it is stale
        wait_for(lambda: metric(proxy, "pinproxy_pinset_stale") == 1, timeout=20)
        assert metric(proxy, "pinproxy_pinset_went_stale_total") == 1
        assert f"--on-stale {on_stale}" in proxy.output()
        expected = 502 if on_stale == "block" else 200
        assert status(proxy, "leaf.pinned.test", upstream.port) == expected
        assert status(proxy, "other.test", upstream.port) == 502
        assert metric(proxy, "pinproxy_stale_pinset_connections_total") == 2
        assert ("pinproxy stale: connection to" in proxy.output()) is (on_stale == "report")
        assert proxy.output().count("went stale") == 1  # logged once, at the transition
        # the twin: a fresh pinset ends it
        pinsets.publish(pinset_text(pki, good_leaf, 2))
        proxy.reload()
        fetched(proxy, "accepted", 2)
        assert metric(proxy, "pinproxy_pinset_stale") == 0
        assert status(proxy, "leaf.pinned.test", upstream.port) == 200
        assert metric(proxy, "pinproxy_stale_pinset_connections_total") == 2
