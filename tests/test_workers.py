"""The supervisor's pinset check runs in a forked child: its verdict is the exit code, and
whatever stops it says why on stderr (the workers' traffic is tested end to end)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from pinproxy.proxy.workers import validate_pinset
from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import REPO, Proxy, curl, pinproxy_command, start_pinproxy
from tests.upstream import SlowUpstreamServer, wait_for


def test_a_good_pinset_passes_and_a_bad_one_prints_its_problems(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nhosts: []\n")
    assert validate_pinset(str(good)) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\nhosts: []\n")
    assert validate_pinset(str(bad)) == 2
    assert f"{bad}:1: unsupported pinset version '2'" in capfd.readouterr().err


def test_an_unexpected_error_in_the_check_refuses_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    def broken(path: str) -> None:
        raise MemoryError("no room for the pinset")

    monkeypatch.setattr("pinproxy.loader.load_pinset", broken)
    path = tmp_path / "pins.yaml"
    assert validate_pinset(str(path)) == 70
    err = capfd.readouterr().err
    assert err == (f"pinproxy: could not check the pinset {path}: "
                   "MemoryError('no room for the pinset'); not starting\n")


# -- end to end: the supervisor of `pinproxy run --workers 2` --------------------------------

_ADMIN = re.compile(r"pinproxy admin listening on http://[^ ]*?:(\d+) ")
_STARTED = re.compile(r"pinproxy worker (\d)/2 started \(pid (\d+)\)")

PINSET = """\
version: 1
unpinned: allow
hosts:
  - host: root.pinned.test
    pins: ["{pin}"]
"""


def admin_get(proxy: Proxy, path: str) -> tuple[int, str]:
    """GET on the supervisor's admin endpoint (its port from the start-up line)."""
    port = int(proxy.wait_for_output(_ADMIN.pattern).group(1))
    with httpx.Client(timeout=5) as client:
        response = client.get(f"http://127.0.0.1:{port}{path}")
    return response.status_code, response.text


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` that carry `labels`, 0 when there are none."""
    return sum(found.value for family in text_string_to_metric_families(text)
               for found in family.samples
               if found.name == name and labels.items() <= found.labels.items())


@pytest.fixture
def pinset(tmp_path: Path, pki: TrustedPki) -> Path:
    path = tmp_path / "pins.yaml"
    path.write_text(PINSET.format(pin=pki.root_pin))
    return path


@pytest.mark.e2e
def test_a_killed_worker_comes_back_while_clients_keep_getting_answers(
        pinset: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2") as proxy:
        wait_for(lambda: admin_get(proxy, "/readyz")[0] == 200, timeout=15)
        code, text = admin_get(proxy, "/metrics")
        assert code == 200
        assert sample(text, "pinproxy_worker_restarts_total") == 0  # the twin: none yet
        pids = {m.group(1): int(m.group(2)) for m in _STARTED.finditer(proxy.output())}
        assert set(pids) == {"1", "2"}

        answers: list[int] = []
        stop = threading.Event()

        def client_loop() -> None:
            while not stop.is_set():
                answers.append(curl(proxy, "root.pinned.test", server.port).status)

        loop = threading.Thread(target=client_loop)
        loop.start()
        try:
            wait_for(lambda: len(answers) >= 3, timeout=15)
            os.kill(pids["1"], signal.SIGKILL)
            proxy.wait_for_output(r"pinproxy worker 1/2 \(pid \d+\) was killed by SIGKILL; "
                                  r"restarting it in 0\.5s")
            new = proxy.wait_for_output(
                rf"pinproxy worker 1/2 started \(pid (?!{pids['1']}\))(\d+)\)", timeout=10)
            proxy.wait_for_output(r"listening on .*\(worker 1/2\)[\s\S]*"
                                  r"listening on .*\(worker 1/2\)", timeout=15)
            assert int(new.group(1)) != pids["1"]
            seen = len(answers)
            wait_for(lambda: len(answers) >= seen + 3, timeout=15)
        finally:
            stop.set()
            loop.join(30)
        # The service kept answering: only the request the killed worker held (in flight, or
        # in its accept queue, which the kernel resets with the socket) can fail.
        assert answers.count(200) >= len(answers) - 1, answers
        assert answers[-3:] == [200] * 3, answers
        wait_for(lambda: admin_get(proxy, "/readyz")[0] == 200, timeout=15)
        code, text = admin_get(proxy, "/metrics")
        assert sample(text, "pinproxy_worker_restarts_total") == 1
        assert proxy.stop() == 0


@pytest.mark.e2e
def test_the_supervisor_is_ready_only_with_its_workers_and_not_while_draining(
        pinset: Path, confdir: Path, pki: TrustedPki, good_leaf: trustme.LeafCert) -> None:
    with (SlowUpstreamServer(good_leaf, delay=1.5) as slow,
          start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2") as proxy):
        wait_for(lambda: admin_get(proxy, "/readyz")[0] == 200, timeout=15)
        code, text = admin_get(proxy, "/pinset")
        assert code == 200
        assert json.loads(text)["sha256"] == hashlib.sha256(pinset.read_bytes()).hexdigest()
        results: list[int] = []
        thread = threading.Thread(target=lambda: results.append(
            curl(proxy, "root.pinned.test", slow.port).status))
        thread.start()
        assert slow.request_arrived.wait(10)
        proxy.process.send_signal(signal.SIGTERM)
        code, text = admin_get(proxy, "/readyz")
        assert (code, text) == (503, "not ready: draining: shutting down\n")
        thread.join(20)
        assert results == [200]  # the request in flight finished
        assert proxy.process.wait(timeout=15) == 0


@pytest.mark.e2e
def test_the_supervisor_is_not_ready_before_its_workers(pinset: Path, confdir: Path,
                                                          pki: TrustedPki) -> None:
    command = pinproxy_command("run", "--pinset", str(pinset), "--listen-port", "0",
                               "--confdir", str(confdir), "--upstream-ca", str(pki.ca_bundle),
                               "--admin-listen", "127.0.0.1:0", "--workers", "2")
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with Proxy(process=process, confdir=confdir) as proxy:
        threading.Thread(target=proxy._drain, daemon=True).start()
        # the admin endpoint is up before the workers (they import mitmproxy first)
        assert admin_get(proxy, "/readyz") == (503, "not ready: the workers are starting\n")
        assert "listening on 127" not in proxy.output()
        wait_for(lambda: admin_get(proxy, "/readyz")[0] == 200, timeout=30)
        assert proxy.output().count("listening on 127") == 2  # both workers, then ready


@pytest.mark.e2e
def test_metrics_sum_every_workers_counters(
        pinset: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2") as proxy:
        wait_for(lambda: admin_get(proxy, "/readyz")[0] == 200, timeout=15)
        before = admin_get(proxy, "/metrics")[1]
        assert [curl(proxy, "root.pinned.test", genuine.port).status
                for _ in range(10)] == [200] * 10
        assert [curl(proxy, "root.pinned.test", rogue.port).status
                for _ in range(4)] == [502] * 4  # the refused twin
        after = admin_get(proxy, "/metrics")[1]
    for action, sent in (("allowed", 10), ("blocked", 4)):
        assert sample(after, "pinproxy_checks_total", action=action) \
            - sample(before, "pinproxy_checks_total", action=action) == sent
    assert sample(after, "pinproxy_check_duration_seconds_count") \
        - sample(before, "pinproxy_check_duration_seconds_count") == 14
    assert sample(after, "pinproxy_pinset_rules") == 1  # every worker loaded the one rule
    assert sample(after, "pinproxy_pinset_loads_total", result="ok") == 2  # one per worker
