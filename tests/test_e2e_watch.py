"""End to end: a running `pinproxy run` reloads its pinset when the file changes, in place, by
atomic rename or by a Kubernetes ConfigMap's `..data` symlink swap, and when a `file:` pin
changes; `--no-watch` waits for SIGHUP. Real proxy, real loopback TLS servers, real curl, while
a client loop through the proxy must see no failed request."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import Proxy, curl, start_pinproxy
from tests.upstream import wait_for

pytestmark = pytest.mark.e2e

WITHIN = 5.0  # seconds: the promise, a change loaded within it


def pinset_text(steady_pin: str, flip_pin: str) -> str:
    """leaf.pinned.test never changes verdict; root.pinned.test flips with `flip_pin`."""
    return f"""\
version: 1
hosts:
  - host: leaf.pinned.test
    pins: ["{steady_pin}"]
  - host: root.pinned.test
    pins: ["{flip_pin}"]
"""


def loads(proxy: Proxy, result: str) -> float:
    text = httpx.get(f"{proxy.admin_url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "pinproxy_pinset_loads_total"
               and sample.labels.get("result") == result)


def shown_sha256(proxy: Proxy) -> str:
    return str(httpx.get(f"{proxy.admin_url}/pinset", timeout=5).json()["sha256"])


def wait_for_sha256(proxy: Proxy, content: bytes) -> float:
    """Seconds until /pinset shows `content` in force (at most WITHIN)."""
    expected, started = hashlib.sha256(content).hexdigest(), time.monotonic()
    wait_for(lambda: shown_sha256(proxy) == expected, timeout=WITHIN)
    return time.monotonic() - started


@contextmanager
def client_loop(proxy: Proxy, port: int) -> Iterator[list[int]]:
    """curl to the host whose verdict never changes, again and again, while the body runs."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            statuses.append(curl(proxy, "leaf.pinned.test", port, timeout=10).status)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=15)


# -- three ways to change the file ---------------------------------------------------------------

def change_in_place(path: Path, text: str) -> None:
    path.write_text(text)  # truncates first: a poll may see it empty, or half written


def change_by_rename(path: Path, text: str) -> None:
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


_STAMPS = iter(range(1, 1000))


def configmap(directory: Path, text: str) -> Path:
    """The layout kubelet mounts: pins.yaml -> ..data/pins.yaml, ..data -> ..<timestamp>."""
    directory.mkdir()
    change_configmap(directory / "pins.yaml", text)
    (directory / "pins.yaml").symlink_to("..data/pins.yaml")
    return directory / "pins.yaml"


def change_configmap(path: Path, text: str) -> None:
    """kubelet's update: a new timestamped directory, a new `..data` symlink renamed over the
    old one (atomic), then the old directory deleted."""
    directory = path.parent
    stamp = f"..2026_12_05_17_00_00.{next(_STAMPS):09d}"
    (directory / stamp).mkdir()
    (directory / stamp / "pins.yaml").write_text(text)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    (directory / "..data_tmp").symlink_to(stamp)
    os.rename(directory / "..data_tmp", data)
    if old is not None:
        shutil.rmtree(directory / old)


@pytest.mark.parametrize("change", [change_in_place, change_by_rename, change_configmap],
                         ids=["in-place", "rename", "configmap"])
def test_a_changed_pinset_is_loaded_within_seconds_without_failing_a_request(
        change: Callable[[Path, str], None], tmp_path: Path, confdir: Path, pki: TrustedPki,
        serve: Serve, good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    first = pinset_text(pki.root_pin, pki.rogue_root_pin)
    if change is change_configmap:
        path = configmap(tmp_path / "mounted", first)
    else:
        path = tmp_path / "pins.yaml"
        path.write_text(first)
    with start_pinproxy(path, confdir, pki.ca_bundle) as proxy:
        assert curl(proxy, "root.pinned.test", genuine.port).status == 502
        assert curl(proxy, "root.pinned.test", rogue.port).status == 200
        assert loads(proxy, "ok") == 1
        with client_loop(proxy, genuine.port) as statuses:
            for count, (flip, passes, refused) in enumerate(
                    [(pki.root_pin, genuine, rogue), (pki.rogue_root_pin, rogue, genuine)], 2):
                text = pinset_text(pki.root_pin, flip)
                change(path, text)
                assert wait_for_sha256(proxy, text.encode()) < WITHIN
                assert curl(proxy, "root.pinned.test", passes.port).status == 200
                assert curl(proxy, "root.pinned.test", refused.port).status == 502
                assert loads(proxy, "ok") == count  # one load per change, not one per write
            time.sleep(2.5)  # two more polls: no late second load of the same change
        assert loads(proxy, "ok") == 3
        assert loads(proxy, "failed") == 0  # a poll may see a half-written file; none loaded it
        assert statuses and set(statuses) == {200}, statuses
    assert "Traceback" not in proxy.output()


def test_a_bad_file_keeps_the_last_good_pinset_until_a_good_one_comes(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    path = tmp_path / "pins.yaml"
    good = pinset_text(pki.root_pin, pki.root_pin)
    path.write_text(good)
    with start_pinproxy(path, confdir, pki.ca_bundle) as proxy:
        change_by_rename(path, "version: 1\nhosts: [oops\n")
        wait_for(lambda: loads(proxy, "failed") == 1, timeout=WITHIN)
        proxy.wait_for_output(rf"pinset reload failed: {path}:\d+: not valid YAML.*"
                              r"the previous pinset stays in force")
        assert shown_sha256(proxy) == hashlib.sha256(good.encode()).hexdigest()
        assert curl(proxy, "root.pinned.test", genuine.port).status == 200
        assert curl(proxy, "root.pinned.test", rogue.port).status == 502

        path.unlink()  # gone: logged once, nothing loaded
        proxy.wait_for_output(rf"pinset file {path} is gone", timeout=WITHIN)
        fixed = pinset_text(pki.root_pin, pki.rogue_root_pin)
        path.write_text(fixed)
        assert wait_for_sha256(proxy, fixed.encode()) < WITHIN
        assert curl(proxy, "root.pinned.test", rogue.port).status == 200
        assert curl(proxy, "root.pinned.test", genuine.port).status == 502
        assert (loads(proxy, "ok"), loads(proxy, "failed")) == (2, 1)
        assert proxy.output().count("is gone") == 1
    assert "Traceback" not in proxy.output()


def test_a_changed_file_pin_is_loaded(tmp_path: Path, confdir: Path, pki: TrustedPki,
                                      serve: Serve, good_leaf: trustme.LeafCert,
                                      rogue_leaf: trustme.LeafCert) -> None:
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    root = tmp_path / "root.pem"
    root.write_bytes(pki.genuine.root_pem)
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(pki.root_pin, "file:root.pem"))
    with start_pinproxy(path, confdir, pki.ca_bundle) as proxy:
        assert curl(proxy, "root.pinned.test", genuine.port).status == 200
        assert curl(proxy, "root.pinned.test", rogue.port).status == 502

        new = tmp_path / "root.pem.new"  # the pinset file itself does not change
        new.write_bytes(pki.rogue.root_pem)
        os.replace(new, root)
        wait_for(lambda: loads(proxy, "ok") == 2, timeout=WITHIN)
        assert curl(proxy, "root.pinned.test", rogue.port).status == 200
        assert curl(proxy, "root.pinned.test", genuine.port).status == 502


def test_no_watch_waits_for_sighup(tmp_path: Path, confdir: Path, pki: TrustedPki,
                                   serve: Serve, good_leaf: trustme.LeafCert,
                                   rogue_leaf: trustme.LeafCert) -> None:
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(pki.root_pin, pki.root_pin))
    with start_pinproxy(path, confdir, pki.ca_bundle, "--no-watch") as proxy:
        change_by_rename(path, pinset_text(pki.root_pin, pki.rogue_root_pin))
        time.sleep(3)  # three polls' worth, had it been watching
        assert loads(proxy, "ok") == 1
        assert curl(proxy, "root.pinned.test", genuine.port).status == 200  # the old pins
        proxy.reload()
        wait_for(lambda: loads(proxy, "ok") == 2, timeout=WITHIN)
        assert curl(proxy, "root.pinned.test", rogue.port).status == 200
        assert curl(proxy, "root.pinned.test", genuine.port).status == 502


def test_each_worker_loads_a_change(tmp_path: Path, confdir: Path, pki: TrustedPki,
                                    serve: Serve, good_leaf: trustme.LeafCert,
                                    rogue_leaf: trustme.LeafCert) -> None:
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(pki.root_pin, pki.root_pin))
    with start_pinproxy(path, confdir, pki.ca_bundle, "--workers", "2") as proxy:
        proxy.wait_for_output(r"\(worker 1/2\)")
        proxy.wait_for_output(r"\(worker 2/2\)")
        proxy.admin_port = int(proxy.wait_for_output(  # the supervisor's own start-up line
            r"pinproxy admin listening on http://[^ ]*?:(\d+) ").group(1))
        changed = pinset_text(pki.root_pin, pki.rogue_root_pin)
        change_by_rename(path, changed)
        assert wait_for_sha256(proxy, changed.encode()) < WITHIN  # the supervisor's /pinset
        wait_for(lambda: proxy.output().count("reloaded pinset") == 2, timeout=WITHIN)
        assert all(curl(proxy, "root.pinned.test", rogue.port).status == 200 for _ in range(6))
        assert curl(proxy, "root.pinned.test", genuine.port).status == 502
        assert loads(proxy, "ok") == 4  # summed over the workers: two each
