"""End to end: the ways to start, reload and stop the proxy, and everything that must stop it
from starting. Real processes, real servers, real clients."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import (
    REPO,
    Proxy,
    curl,
    mitmdump_command,
    read_until_closed,
    report_records,
    run_pinproxy,
    start,
    start_pinproxy,
    tls_tunnel,
)
from tests.upstream import wait_for

pytestmark = pytest.mark.e2e


def pinset_text(pin: str, unpinned: str = "allow") -> str:
    return f"""\
version: 1
unpinned: {unpinned}
hosts:
  - host: root.pinned.test
    pins: ["{pin}"]
"""


def assert_untouched(server: object) -> None:
    wait_for(lambda: server.connections_closed >= server.connections_accepted)  # type: ignore[attr-defined]
    assert server.received_bytes() == b""  # type: ignore[attr-defined]


# -- unpinned: block ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blocking_proxy(tmp_path_factory: pytest.TempPathFactory, pki: TrustedPki,
                   confdir: Path) -> Iterator[Proxy]:
    pinset = tmp_path_factory.mktemp("block") / "pins.yaml"
    pinset.write_text(pinset_text(pki.root_pin, unpinned="block"))
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy:
        yield proxy


def test_unpinned_block_lets_only_pinned_hosts_through(blocking_proxy: Proxy, serve: Serve,
                                                       good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    assert curl(blocking_proxy, "root.pinned.test", server.port).status == 200
    refused = serve(good_leaf)
    result = curl(blocking_proxy, "free.test", refused.port)
    assert result.status == 502 and "reason: host-not-pinned" in result.body
    assert_untouched(refused)


# -- mitmdump -s addons/pinning.py ---------------------------------------------------------------

def test_mitmdump_script_enforces_the_same_pins(tmp_path: Path, pki: TrustedPki, confdir: Path,
                                                serve: Serve, good_leaf: trustme.LeafCert,
                                                rogue_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.root_pin))
    command = mitmdump_command(
        "--listen-port", "0", "--set", f"pinset={pinset}", "--set", f"confdir={confdir}",
        "--set", f"ssl_verify_upstream_trusted_ca={pki.ca_bundle}",
        "--set", "termlog_verbosity=warn", "--set", "flow_detail=0")
    with start(command, confdir) as proxy:
        genuine = serve(good_leaf)
        assert curl(proxy, "root.pinned.test", genuine.port).status == 200
        rogue = serve(rogue_leaf)
        result = curl(proxy, "root.pinned.test", rogue.port)
        assert result.status == 502 and "reason: pin-mismatch" in result.body
        raw = serve(rogue_leaf, "raw")
        with tls_tunnel(proxy, "root.pinned.test", raw.port) as sock:
            sock.sendall(b"\x00raw")
            assert read_until_closed(sock)[0] == b""
        assert_untouched(rogue)
        assert_untouched(raw)


@pytest.mark.parametrize(("options", "message"), [
    (["ssl_insecure=true"], "pinproxy refuses 'ssl_insecure'"),
    (["ignore_hosts=.*"], "pinproxy refuses 'ignore_hosts'"),
    (["allow_hosts=example.com"], "pinproxy refuses 'allow_hosts'"),
    (["connection_strategy=lazy"], "pinproxy needs connection_strategy=eager"),
    (["stream_large_bodies=1m"], "pinproxy refuses 'stream_large_bodies'"),
    (["mode=reverse:quic://127.0.0.1:1"], "pinproxy supports only the regular"),
    (["pinset=/nonexistent/pins.yaml"], "cannot read pinset"),
    # mitmproxy rejects the duplicate while loading the script and would serve without it
    (["pinset=PINSET", "pinset=PINSET"], "pinproxy is not active"),
])
def test_mitmdump_refuses_to_start_unpinned(options: list[str], message: str, confdir: Path,
                                            tmp_path: Path, pki: TrustedPki) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.root_pin))
    sets = [arg for option in options
            for arg in ("--set", option.replace("PINSET", str(pinset)))]
    if not any(option.startswith("pinset=") for option in options):
        sets += ["--set", f"pinset={pinset}"]
    command = mitmdump_command("--listen-port", "0", "--set", f"confdir={confdir}", *sets)
    with start_expecting_exit(command, confdir) as proxy:
        assert proxy.process.wait(timeout=30) == 1
        output = proxy.output()
    assert message in output
    assert "Traceback" not in output
    assert "pinproxy listening" not in output


def test_mitmdump_stops_when_a_script_reload_fails(tmp_path: Path, pki: TrustedPki, confdir: Path,
                                                   serve: Serve,
                                                   rogue_leaf: trustme.LeafCert) -> None:
    """mitmdump unloads a script that fails to reload and serves on; pinproxy stops it."""
    script = tmp_path / "pinning.py"
    script.write_text((REPO / "addons" / "pinning.py").read_text())
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.root_pin))
    command = mitmdump_command(
        "--listen-port", "0", "--set", f"pinset={pinset}", "--set", f"confdir={confdir}",
        "--set", f"ssl_verify_upstream_trusted_ca={pki.ca_bundle}", script=script)
    with start(command, confdir) as proxy:
        rogue = serve(rogue_leaf)
        assert curl(proxy, "root.pinned.test", rogue.port).status == 502
        script.write_text(script.read_text() + "\nthis is not python(\n")
        assert proxy.process.wait(timeout=30) == 1
        assert "pinproxy is not active" in proxy.output()
        result = curl(proxy, "root.pinned.test", rogue.port)
        assert result.status == 0  # nothing listens any more
        assert_untouched(rogue)


def start_expecting_exit(command: list[str], confdir: Path) -> Proxy:
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    proxy = Proxy(process=process, confdir=confdir)
    threading.Thread(target=proxy._drain, daemon=True).start()
    return proxy


# -- pinproxy run: start-up refusals, reload, stop -----------------------------------------------

@pytest.mark.parametrize(("args", "expected"), [
    (["--listen-port", "70000"], "is not a port number"),
    (["--upstream-ca", "/nonexistent.pem"], "--upstream-ca /nonexistent.pem"),
    (["--upstream-ca", "config/pins.yaml"], "no CA certificate could be read"),
    (["--pinset", "/nonexistent/pins.yaml"], "cannot read pinset"),
    (["--report-log", "/nonexistent/dir/r.jsonl"], "cannot open report log"),
])
def test_run_refuses_bad_arguments(args: list[str], expected: str, confdir: Path) -> None:
    done = run_pinproxy("run", "--confdir", str(confdir), "--listen-port", "0", *args)
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_run_refuses_a_bad_pinset_with_every_problem(tmp_path: Path, confdir: Path) -> None:
    pinset = tmp_path / "bad.yaml"
    pinset.write_text("version: 1\nmode: off\nhosts:\n  - host: a.test\n    pins: []\n")
    done = run_pinproxy("run", "--pinset", str(pinset), "--confdir", str(confdir),
                        "--listen-port", "0")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{pinset}:2: 'mode' must be one of 'enforce' or 'report', not the YAML boolean 'off'; "
        "quote it if you mean the text",
        f"{pinset}:5: a.test has an empty 'pins' list, which would pin nothing; list at least "
        "one pin (and a backup)",
    ]


def test_run_reports_a_port_in_use(confdir: Path, pki: TrustedPki, tmp_path: Path) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.root_pin))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_pinproxy("run", "--pinset", str(pinset), "--confdir", str(confdir),
                            "--listen-port", str(port))
    assert done.returncode != 0
    assert "address already in use" in (done.stdout + done.stderr).lower()
    assert "Traceback" not in done.stdout + done.stderr


def test_sighup_reloads_and_a_bad_file_keeps_the_old_pinset(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.rogue_root_pin))
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy:
        assert curl(proxy, "root.pinned.test", genuine.port).status == 502
        assert curl(proxy, "root.pinned.test", rogue.port).status == 200

        pinset.write_text(pinset_text(pki.root_pin))
        proxy.reload()
        proxy.wait_for_output(r"reloaded pinset .*pins.yaml: 1 host rules")
        assert curl(proxy, "root.pinned.test", genuine.port).status == 200
        assert curl(proxy, "root.pinned.test", rogue.port).status == 502

        pinset.write_text("version: 1\nhosts: [oops\n")
        proxy.reload()
        proxy.wait_for_output(r"pinset reload failed: .*pins.yaml:\d+: not valid YAML.*"
                              r"the previous pinset stays in force")
        assert curl(proxy, "root.pinned.test", genuine.port).status == 200
        assert curl(proxy, "root.pinned.test", rogue.port).status == 502
        assert proxy.process.poll() is None
    assert "Traceback" not in proxy.output()


def test_sigterm_stops_cleanly(tmp_path: Path, confdir: Path, pki: TrustedPki) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.root_pin))
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy:
        started = time.monotonic()
        assert proxy.stop() == 0
        assert time.monotonic() - started < 5
    assert "Traceback" not in proxy.output()
    assert f"clients must trust {confdir}/mitmproxy-ca-cert.pem" in proxy.output()


# -- --workers N -----------------------------------------------------------------------------

def test_workers_share_the_port_the_pinset_and_the_report_log(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.rogue_root_pin))
    report_log = tmp_path / "violations.jsonl"
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2",
                        report_log=report_log) as proxy:
        proxy.wait_for_output(r"\(worker 1/2\)")
        proxy.wait_for_output(r"\(worker 2/2\)")
        workers = children_of(proxy.process.pid)
        assert len(workers) == 2

        # many new connections: the kernel spreads them; every one is checked
        results = [curl(proxy, "root.pinned.test", genuine.port).status for _ in range(12)]
        assert results == [502] * 12
        assert curl(proxy, "root.pinned.test", rogue.port).status == 200
        assert_untouched(genuine)
        wait_for(lambda: len(report_records(proxy)) >= 12)
        time.sleep(0.2)  # a duplicate would show up now
        records = report_records(proxy)
        assert len(records) == 12  # one whole line per refusal, none lost, none doubled
        assert {r["port"] for r in records} == {genuine.port}

        # SIGHUP to the supervisor reaches every worker
        pinset.write_text(pinset_text(pki.root_pin))
        proxy.reload()
        wait_for(lambda: proxy.output().count("reloaded pinset") == 2, timeout=10)
        assert all(curl(proxy, "root.pinned.test", genuine.port).status == 200
                   for _ in range(8))
        assert curl(proxy, "root.pinned.test", rogue.port).status == 502

        # a worker that dies is restarted: tests/test_workers.py


def test_workers_stop_cleanly_on_sigterm(tmp_path: Path, confdir: Path, pki: TrustedPki) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text(pki.root_pin))
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2") as proxy:
        proxy.wait_for_output(r"\(worker 2/2\)|\(worker 1/2\)")
        workers = children_of(proxy.process.pid)
        assert proxy.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert "Traceback" not in proxy.output()


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_workers_report_a_bad_pinset_once(tmp_path: Path, confdir: Path) -> None:
    pinset = tmp_path / "bad.yaml"
    pinset.write_text("version: 1\nhosts:\n  - host: a.test\n    pins: []\n")
    done = run_pinproxy("run", "--pinset", str(pinset), "--confdir", str(confdir),
                        "--listen-port", "0", "--workers", "2")
    assert done.returncode == 2
    assert done.stderr.count("has an empty 'pins' list") == 1
    assert "Traceback" not in done.stderr + done.stdout
