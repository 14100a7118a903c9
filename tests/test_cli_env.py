"""`pinproxy run` configured by flags and `PINPROXY_*` variables: precedence, parsing, the
open-proxy guard, and the docs table generated from the same flag rows."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from pinproxy.cli import parser
from pinproxy.commands import run
from pinproxy.config import RunConfig
from pinproxy.errors import PinproxyError
from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import REPO, curl, pinproxy_command, run_pinproxy, start

DOCS = REPO / "docs" / "configuration.md"


def config(*argv: str, **environ: str) -> RunConfig:
    args = parser().parse_args(["run", *argv])
    return run._config(args, environ)


def test_every_run_flag_has_its_variable_and_its_setting() -> None:
    options = {action.option_strings[-1]: action for action in _run_parser()._actions
               if action.option_strings and action.help != argparse.SUPPRESS}
    options.pop("--help")
    options.pop("--verbose")  # a second spelling of --log-level debug, not a setting of its own
    assert sorted(options) == sorted(flag.option for flag in run.FLAGS)
    fields = set(RunConfig.__dataclass_fields__)
    assert {flag.name for flag in run.FLAGS} == fields
    for flag in run.FLAGS:
        assert flag.variable == "PINPROXY_" + flag.option[2:].upper().replace("-", "_")


def _run_parser() -> argparse.ArgumentParser:
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = commands.choices["run"]
    return found


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ((), {}, RunConfig()),
    ((), {"PINPROXY_LISTEN_PORT": "9000"}, RunConfig(listen_port=9000)),
    (("--listen-port", "9001"), {"PINPROXY_LISTEN_PORT": "9000"}, RunConfig(listen_port=9001)),
    (("--listen-port", "9001"), {}, RunConfig(listen_port=9001)),
    ((), {"PINPROXY_LISTEN_PORT": ""}, RunConfig()),  # empty: unset
    ((), {"PINPROXY_PINSET": "/etc/pins.yaml", "PINPROXY_WORKERS": "4",
          "PINPROXY_LOG_LEVEL": "debug", "PINPROXY_LOG_FORMAT": "json",
          "PINPROXY_ADMIN_LISTEN": "off", "PINPROXY_DRAIN_TIMEOUT": "2.5",
          "PINPROXY_CONFDIR": "/ca", "PINPROXY_REPORT_LOG": "/r.log",
          "PINPROXY_PROXY_AUTH": "u:p", "PINPROXY_LISTEN_HOST": "0.0.0.0"},
     RunConfig(pinset="/etc/pins.yaml", workers=4, log_level="debug", log_format="json",
               admin_listen="off", drain_timeout=2.5, confdir="/ca", report_log="/r.log",
               proxy_auth="u:p", listen_host="0.0.0.0")),
    (("-v",), {"PINPROXY_LOG_LEVEL": "error"}, RunConfig(log_level="debug")),
    (("--log-level", "warning"), {"PINPROXY_LOG_LEVEL": "error"}, RunConfig(log_level="warning")),
    ((), {"PINPROXY_ADMIN_LISTEN": "[::1]:9902"}, RunConfig(admin_listen="[::1]:9902")),
])
def test_a_flag_wins_over_its_variable_which_wins_over_the_default(
        argv: tuple[str, ...], environ: dict[str, str], expected: RunConfig) -> None:
    assert config(*argv, **environ) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("Yes", True),
    ("0", False), ("false", False), ("No", False), ("", False),
])
def test_a_switch_variable_is_a_boolean(text: str, expected: bool) -> None:
    assert config(PINPROXY_ALLOW_UNAUTHENTICATED=text).allow_unauthenticated is expected
    # the flag on the command line wins over a variable that says no
    assert config("--allow-unauthenticated",
                  PINPROXY_ALLOW_UNAUTHENTICATED=text).allow_unauthenticated is True


@pytest.mark.parametrize(("name", "text", "message"), [
    ("PINPROXY_LISTEN_PORT", "80x", "PINPROXY_LISTEN_PORT='80x' is not a port number (0-65535)"),
    ("PINPROXY_LISTEN_PORT", "65536", "PINPROXY_LISTEN_PORT='65536' is not a port number"),
    ("PINPROXY_WORKERS", "0", "PINPROXY_WORKERS='0' is not a number of workers (1-64)"),
    ("PINPROXY_WORKERS", "²", "PINPROXY_WORKERS='²' is not a number of workers"),
    ("PINPROXY_LOG_LEVEL", "loud", "PINPROXY_LOG_LEVEL='loud' is not one of debug, info,"),
    ("PINPROXY_LOG_FORMAT", "xml", "PINPROXY_LOG_FORMAT='xml' is not one of text, json"),
    ("PINPROXY_ADMIN_LISTEN", "9901", "PINPROXY_ADMIN_LISTEN='9901' is not HOST:PORT or 'off'"),
    ("PINPROXY_ADMIN_LISTEN", "::1:9901", "PINPROXY_ADMIN_LISTEN='::1:9901' is not HOST:PORT"),
    ("PINPROXY_DRAIN_TIMEOUT", "0", "PINPROXY_DRAIN_TIMEOUT='0' is not a number of seconds"),
    ("PINPROXY_DRAIN_TIMEOUT", "-1", "PINPROXY_DRAIN_TIMEOUT='-1' is not a number of seconds"),
    ("PINPROXY_DRAIN_TIMEOUT", "3601", "PINPROXY_DRAIN_TIMEOUT='3601' is not a number of"),
    ("PINPROXY_DRAIN_TIMEOUT", "nan", "PINPROXY_DRAIN_TIMEOUT='nan' is not a number of"),
    ("PINPROXY_DRAIN_TIMEOUT", "inf", "PINPROXY_DRAIN_TIMEOUT='inf' is not a number of"),
    ("PINPROXY_ALLOW_UNAUTHENTICATED", "on",
     "PINPROXY_ALLOW_UNAUTHENTICATED='on' is not a boolean (1/0, true/false, yes/no)"),
])
def test_a_bad_variable_is_named_with_its_value(name: str, text: str, message: str) -> None:
    with pytest.raises(PinproxyError) as raised:
        config(**{name: text})
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(("flag", "text", "message"), [
    ("--listen-port", "80x", "'80x' is not a port number (0-65535)"),
    ("--drain-timeout", "0", "'0' is not a number of seconds (> 0, at most 3600)"),
    ("--admin-listen", "nope", "'nope' is not HOST:PORT or 'off'"),
    ("--workers", "65", "'65' is not a number of workers (1-64)"),
])
def test_a_bad_flag_is_a_usage_error(flag: str, text: str, message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parser().parse_args(["run", flag, text])
    assert raised.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_a_good_flag_overrides_a_bad_variable_only_if_the_variable_is_not_read() -> None:
    # every variable is read, so a bad one is an error even when its flag is given: a typo in
    # the environment must not hide until the day the flag is dropped
    with pytest.raises(PinproxyError, match="PINPROXY_LISTEN_PORT"):
        config("--listen-port", "1", PINPROXY_LISTEN_PORT="x")


def test_an_unusable_upstream_ca_names_where_it_came_from(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(PinproxyError, match=f"^PINPROXY_UPSTREAM_CA {junk}"):
        config(PINPROXY_UPSTREAM_CA=str(junk))
    with pytest.raises(PinproxyError, match=f"^--upstream-ca {junk}"):
        config("--upstream-ca", str(junk), PINPROXY_UPSTREAM_CA=str(junk))


def test_a_bad_proxy_auth_is_refused_once_before_any_worker_naming_where_it_came_from(
        tmp_path: Path) -> None:
    with pytest.raises(PinproxyError, match=r"^PINPROXY_PROXY_AUTH: the password of user 'alice'"):
        config(PINPROXY_PROXY_AUTH="alice:")
    with pytest.raises(PinproxyError, match=r"^--proxy-auth: the password of user 'alice'"):
        config("--proxy-auth", "alice:")
    missing = tmp_path / "htpasswd"
    with pytest.raises(PinproxyError, match=f"^{missing}: cannot read htpasswd file"):
        config("--proxy-auth", f"@{missing}")
    assert config("--proxy-auth", "alice:s3:cret").proxy_auth == "alice:s3:cret"  # twin


def test_unknown_variables_are_named_in_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"PINPROXY_PINSETS": "/x", "PINPROXY_LISTENPORT": "1", "PINPROXYX": "2"}
    with caplog.at_level(logging.WARNING, logger="pinproxy"):
        assert config(**environ) == RunConfig()
        run._warn_at_start(RunConfig(), environ)
        [record] = caplog.records
        assert "ignoring unknown variable(s) PINPROXY_LISTENPORT, PINPROXY_PINSETS" \
            in record.getMessage()
        caplog.clear()
        run._warn_at_start(config(PINPROXY_PINSET="p", HOME="/"), {"PINPROXY_PINSET": "p"})
        assert caplog.records == []


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("10.0.0.1", False),
    ("fe80::1", False), ("localhost.example", False), ("myhost", False), ("", False),
])
def test_loopback_is_127_8_ipv6_one_and_localhost_nothing_resolved(host: str,
                                                                   loopback: bool) -> None:
    assert run.is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_listening_beyond_loopback_without_auth_is_refused(host: str) -> None:
    with pytest.raises(PinproxyError) as raised:
        config("--listen-host", host)
    assert str(raised.value) == (
        f"refusing to listen on {host} without --proxy-auth: anyone who can reach the port "
        "could use this proxy; give --proxy-auth, or --allow-unauthenticated to accept that")
    with pytest.raises(PinproxyError, match="refusing"):
        config(PINPROXY_LISTEN_HOST=host)


def test_auth_or_the_explicit_switch_lets_it_listen_beyond_loopback(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pinproxy"):
        run._warn_at_start(config("--listen-host", "0.0.0.0", "--proxy-auth", "u:p"), {})
        run._warn_at_start(config(PINPROXY_LISTEN_HOST="0.0.0.0", PINPROXY_PROXY_AUTH="u:p"), {})
        assert caplog.records == []
        run._warn_at_start(config("--listen-host", "0.0.0.0",
                                  PINPROXY_ALLOW_UNAUTHENTICATED="yes"), {})
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.name.startswith("pinproxy.")
    assert "without --proxy-auth" in record.getMessage()


def test_docs_environment_table_is_the_generated_one() -> None:
    table = run.environment_table()
    assert table in DOCS.read_text(), (
        "docs/configuration.md is stale: paste pinproxy.commands.run.environment_table()")
    for flag in run.FLAGS:
        assert f"`{flag.variable}`" in table


# -- end to end ----------------------------------------------------------------------------

PINSET = """\
version: 1
unpinned: block
hosts:
  - host: root.pinned.test
    pins: ["{pin}"]
"""


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No PINPROXY_ variable of the test runner's own leaks into the proxy started."""
    for name in list(os.environ):
        if name.startswith("PINPROXY_"):
            monkeypatch.delenv(name)
    yield monkeypatch


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.e2e
def test_run_configured_only_by_environment(environment: pytest.MonkeyPatch, tmp_path: Path,
                                            pki: TrustedPki, confdir: Path, serve: Serve,
                                            good_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(PINSET.format(pin=pki.root_pin))
    port = _free_port()
    for name, value in {"PINSET": str(pinset), "LISTEN_PORT": str(port),
                        "CONFDIR": str(confdir), "UPSTREAM_CA": str(pki.ca_bundle),
                        "ADMIN_LISTEN": "off"}.items():
        environment.setenv(f"PINPROXY_{name}", value)
    with start(pinproxy_command("run"), confdir) as proxy:
        assert proxy.port == port
        server = serve(good_leaf)
        assert curl(proxy, "root.pinned.test", server.port).status == 200
        refused = curl(proxy, "other.test", serve(good_leaf).port)
        assert refused.status == 502 and "host-not-pinned" in refused.body
    # its twin: the flag wins over the variable
    with start(pinproxy_command("run", "--listen-port", "0"), confdir) as proxy:
        assert proxy.port != port


@pytest.mark.e2e
def test_run_refuses_a_bad_variable_naming_it(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("PINPROXY_LISTEN_PORT", "80x")
    done = run_pinproxy("run")
    assert done.returncode == 2
    assert done.stderr == "pinproxy: PINPROXY_LISTEN_PORT='80x' is not a port number (0-65535)\n"


@pytest.mark.e2e
def test_run_refuses_an_open_proxy_and_nothing_listens(environment: pytest.MonkeyPatch,
                                                       confdir: Path, tmp_path: Path) -> None:
    port = _free_port()
    done = run_pinproxy("run", "--listen-host", "0.0.0.0", "--listen-port", str(port),
                        "--confdir", str(confdir), "--admin-listen", "off")
    assert done.returncode == 2
    assert done.stderr == (
        "pinproxy: refusing to listen on 0.0.0.0 without --proxy-auth: anyone who can reach the "
        "port could use this proxy; give --proxy-auth, or --allow-unauthenticated to accept "
        "that\n")
    assert "Traceback" not in done.stdout + done.stderr
    assert not _listening(port)


@pytest.mark.e2e
@pytest.mark.parametrize(("extra", "warned"), [
    (("--listen-host", "0.0.0.0", "--allow-unauthenticated"), True),
    (("--listen-host", "127.0.0.1"), False),
])
def test_run_starts_unauthenticated_only_when_told_and_warns(
        environment: pytest.MonkeyPatch, confdir: Path, tmp_path: Path, pki: TrustedPki,
        extra: tuple[str, ...], warned: bool) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(PINSET.format(pin=pki.root_pin))
    with start(pinproxy_command("run", "--pinset", str(pinset), "--listen-port", "0",
                                "--confdir", str(confdir), "--admin-listen", "off",
                                *extra), confdir) as proxy:
        assert _listening(proxy.port)
        assert ("without --proxy-auth" in proxy.output()) is warned
