"""`pinproxy run`: the proxy, embedding mitmproxy with the pinning addon."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pinproxy import logs
from pinproxy.commands._args import port
from pinproxy.config import RunConfig, host_and_port
from pinproxy.credentials import parse_proxy_auth
from pinproxy.errors import PinproxyError, quote
from pinproxy.learned import read_learned, require_learn_file
from pinproxy.loader import load_pinset
from pinproxy.pinset import Pinset
from pinproxy.proxy.ca import ensure_ca
from pinproxy.remote import CACHE_NAME, check_url, parse_pubkey
from pinproxy.tools.probe import check_ca_file

_SWITCH_INTERVAL = 0.0005  # seconds; see docs/performance.md
_NO_FULL_COLLECTIONS = 1_000_000_000  # a gen-2 threshold no load reaches

_DEFAULTS = RunConfig()
ENV_PREFIX = "PINPROXY_"
_MAX_DRAIN_TIMEOUT = 3600.0
log = logging.getLogger("pinproxy.run")


@dataclass(frozen=True, slots=True)
class Flag:
    """One `run` setting: its flag, its `PINPROXY_` variable and its docs row come from here.

    `parse` turns text into the value and raises `ValueError` with the reason ("is not a port
    number (0-65535)"); the caller quotes the text and names the flag or the variable.
    A switch (`parse is None`) takes no value on the command line; its variable is a boolean.
    """

    name: str  # the RunConfig field
    parse: Callable[[str], object] | None
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def default(self) -> object:
        return getattr(_DEFAULTS, self.name)


def _port(text: str) -> int:
    try:
        return port(text)
    except argparse.ArgumentTypeError:
        raise ValueError("is not a port number (0-65535)") from None


def _whole_number(low: int, high: int, message: str) -> Callable[[str], int]:
    """A parse function for ASCII digits from `low` to `high`; anything else is `message`."""
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(message)
        return int(text)
    return parse


def _seconds(low: float, high: float, message: str,
             low_inclusive: bool = False) -> Callable[[str], float]:
    """A parse function for seconds above `low` (or from it) and at most `high`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value >= low if low_inclusive else value > low
        if not (above and value <= high):  # NaN and inf fail here too
            raise ValueError(message)
        return value
    return parse


_MAX_TIMEOUT = 86400
_workers = _whole_number(1, 64, "is not a number of workers (1-64)")
_report_queue = _whole_number(1, 1_000_000, "is not a number of reports (1-1000000)")
_max_connections = _whole_number(1, 1_000_000, "is not a number of connections (1-1000000)")
# mitmproxy's tcp_timeout is a whole number of seconds
_idle_timeout = _whole_number(1, _MAX_TIMEOUT,
                              f"is not a whole number of seconds (1 to {_MAX_TIMEOUT})")
_drain_timeout = _seconds(0, _MAX_DRAIN_TIMEOUT, "is not a number of seconds "
                          f"(> 0, at most {_MAX_DRAIN_TIMEOUT:g})")
_timeout = _seconds(0, _MAX_TIMEOUT, f"is not a number of seconds (> 0, at most {_MAX_TIMEOUT})")
_refresh = _seconds(1, _MAX_TIMEOUT, f"is not a number of seconds (1 to {_MAX_TIMEOUT})",
                    low_inclusive=True)


def _admin_listen(text: str) -> str:
    if text != "off":
        try:
            host_and_port(text)
        except PinproxyError:
            raise ValueError("is not HOST:PORT or 'off'") from None
    return text


def _nonempty(text: str) -> str:
    if not text:
        raise ValueError("is empty")
    return text


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return text
    return parse


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _boolean(text: str) -> bool:
    """A switch's variable: 1/0, true/false, yes/no in any case; nothing else passes."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("is not a boolean (1/0, true/false, yes/no)")


def _https_url(text: str) -> str:
    try:
        check_url(text)
    except PinproxyError as e:
        raise ValueError(str(e).removeprefix(f"{text[:200]!r} ")) from None
    return text


FLAGS: tuple[Flag, ...] = (
    Flag("pinset", _nonempty, "pinset YAML (default: %(default)s)", "PATH"),
    Flag("listen_host", _nonempty, "address the proxy listens on (default: %(default)s)", "HOST"),
    Flag("listen_port", _port, "port the proxy listens on, 0 for any free one "
         "(default: %(default)s)", "PORT"),
    Flag("confdir", _nonempty, "directory of the proxy's CA (default: %(default)s)", "DIR"),
    Flag("upstream_ca", _nonempty,
         "trust only these CA certificates upstream (replaces the default bundle)", "PEM"),
    Flag("report_log", _nonempty, "append one JSON object per pin violation to this file",
         "PATH"),
    Flag("report_queue", _report_queue, "violation reports that may wait for the pinset's "
         "report_uri collector; more are dropped and counted (default: %(default)s)", "N"),
    Flag("workers", _workers, "proxy processes sharing the port, one per core (default: 1)", "N"),
    Flag("log_level", _choice("debug", "info", "warning", "error"), "default: %(default)s",
         choices=("debug", "info", "warning", "error")),
    Flag("log_format", _choice("text", "json"),
         "json: one object per line on stderr (default: %(default)s)", choices=("text", "json")),
    Flag("admin_listen", _admin_listen,
         "serve /healthz, /readyz, /metrics and /pinset here; 'off' disables it "
         "(default: %(default)s)", "HOST:PORT"),
    Flag("proxy_auth", _nonempty,
         "clients must authenticate: 'user:pass' or '@path/to/htpasswd'", "SPEC"),
    Flag("allow_unauthenticated", None, "listen beyond loopback without --proxy-auth"),
    Flag("drain_timeout", _drain_timeout,
         "on SIGTERM, how long in-flight requests may finish (default: %(default)s)", "SECONDS"),
    Flag("pinset_url", _https_url, "fetch a signed pinset (and URL.minisig) from this https URL "
         "instead of --pinset", "URL"),
    Flag("pinset_pubkey", _nonempty,
         "minisign public key that signs --pinset-url: 'RW...' or '@file'", "KEY"),
    Flag("pinset_refresh", _refresh, "seconds between fetches of --pinset-url, each "
         "jittered by up to a tenth (default: %(default)s)", "SECONDS"),
    Flag("pinset_cache", _nonempty, "directory keeping the last accepted signed pinset, "
         "enforced at start-up when the URL cannot be reached", "DIR"),
    Flag("on_stale", _choice("keep", "report", "block"),
         "when the signed pinset in force is past its valid_until and no newer one could be "
         "fetched: keep enforcing it, also report every connection as stale, or block every "
         "connection (default: %(default)s)", choices=("keep", "report", "block")),
    Flag("learn_file", _nonempty, "the pins learned on first use for 'mode: learn' and "
         "'unpinned: learn' (like SSH's known_hosts)", "PATH"),
    Flag("no_watch", None, "reload the pinset only on SIGHUP, not when its files change"),
    Flag("upstream_timeout", _timeout, "seconds an upstream may take to accept TCP, and then "
         "to finish its TLS handshake; past it the client gets the 502 page "
         "(default: %(default)s)", "SECONDS"),
    Flag("request_head_timeout", _timeout, "seconds a client has from connecting (or from its "
         "CONNECT) to send a complete request head (default: %(default)s)", "SECONDS"),
    Flag("idle_timeout", _idle_timeout, "close a client connection that sent or received "
         "nothing for this many seconds (default: %(default)s)", "SECONDS"),
    Flag("max_connections", _max_connections, "open client connections per process (per "
         "worker); more are closed at once (default: %(default)s)", "N"),
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run", help="start the proxy",
        epilog=f"Every flag can also be given as {ENV_PREFIX}<FLAG> (e.g. "
               f"{ENV_PREFIX}LISTEN_PORT); a flag on the command line wins over its variable.")
    for flag in FLAGS:
        # default None: "not on the command line", so _config can tell a flag from a default
        if flag.parse is None:
            parser.add_argument(flag.option, action="store_const", const=True, default=None,
                                help=flag.help)
        else:
            parser.add_argument(flag.option, type=_for_argparse(flag.parse), default=None,
                                metavar=flag.metavar or "{" + ",".join(flag.choices) + "}",
                                help=flag.help.replace("%(default)s", str(flag.default)))
    parser.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                        help="the same as --log-level debug")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # "i/N": started by --workers
    parser.add_argument("--status-fd", type=int, help=argparse.SUPPRESS)  # a worker's "ready" pipe
    parser.set_defaults(command=run)


def _for_argparse(parse: Callable[[str], object]) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{quote(text)} {e}") from None
    return convert


def from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings the `PINPROXY_` variables give; a bad value is a `PinproxyError` naming it.

    An empty variable counts as unset (`PINPROXY_PROXY_AUTH=` in a compose file means "none").
    """
    values: dict[str, object] = {}
    for flag in FLAGS:
        text = environ.get(flag.variable, "")
        if not text:
            continue
        try:
            values[flag.name] = (flag.parse or _boolean)(text)
        except ValueError as e:
            raise PinproxyError(f"{flag.variable}={quote(text)} {e}") from None
    return values


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """`PINPROXY_` variables no flag reads: a typo (`PINPROXY_PINSETS`) must not pass silently."""
    known = {flag.variable for flag in FLAGS}
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


def environment_table() -> str:
    """The Markdown table of docs/configuration.md, from the same rows as the flags."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for flag in FLAGS:
        default = flag.default
        shown = "-" if default is None else ("0" if default is False else str(default))
        meaning = flag.help.split(" (default:")[0].replace("%(default)s", shown)
        if flag.parse is None:
            meaning += " (1/0, true/false, yes/no)"
        elif flag.choices:
            meaning = f"one of {', '.join(flag.choices)}" + (
                "" if meaning.startswith("default:") else f"; {meaning}")
        if meaning.startswith("default:"):
            meaning = ""
        rows.append(f"| `{flag.variable}` | `{flag.option}` | `{shown}` | {meaning} |")
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.worker is not None:  # started by --workers: the whole configuration is on stdin
        return _serve(RunConfig.from_json(sys.stdin.read()), worker=args.worker,
                      status_fd=args.status_fd)
    config = _config(args, os.environ)
    logs.configure(config.log_level, config.log_format)  # the supervisor's; serve() sets its own
    _warn_at_start(config, os.environ)
    ensure_ca(config.confdir)  # before any worker starts, else each would make its own CA
    if config.workers > 1:
        return _supervise(config)
    return _serve(config)


def _config(args: argparse.Namespace, environ: Mapping[str, str]) -> RunConfig:
    """The validated run configuration: the one value every part of the proxy reads.

    Each setting comes from its flag, else its `PINPROXY_` variable, else its default.
    """
    settings = {flag.name: flag.default for flag in FLAGS}
    settings.update(from_environment(environ))
    settings.update({flag.name: getattr(args, flag.name) for flag in FLAGS
                     if getattr(args, flag.name) is not None})
    config = RunConfig(**settings)  # type: ignore[arg-type]  # each parse gives its field's type
    if config.upstream_ca:
        try:  # the check `pin` and `check --live` use: CA certificates OpenSSL can load
            check_ca_file(config.upstream_ca)
        except PinproxyError as e:
            source = "--upstream-ca" if args.upstream_ca is not None else "PINPROXY_UPSTREAM_CA"
            raise PinproxyError(f"{source} {e}") from None
    if config.proxy_auth:  # once here, not once per worker; the workers parse it again
        try:
            parse_proxy_auth(config.proxy_auth)
        except PinproxyError as e:
            if args.proxy_auth is None:
                raise PinproxyError(str(e).replace("--proxy-auth", "PINPROXY_PROXY_AUTH")) \
                    from None
            raise
    _refuse_open_proxy(config)
    _check_signed_pinset(config, args, environ)
    if config.learn_file is not None:  # a corrupt learn file: one error, before any worker
        read_learned(config.learn_file)
    return config


def _given(name: str, args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """How a setting was given: its flag, its variable, or None (the default)."""
    flag = next(flag for flag in FLAGS if flag.name == name)
    if getattr(args, name) is not None:
        return flag.option
    return flag.variable if environ.get(flag.variable) else None


def _check_signed_pinset(config: RunConfig, args: argparse.Namespace,
                         environ: Mapping[str, str]) -> None:
    """`--pinset-url` and the flags that go with it: both or none, and never with --pinset."""
    url = _given("pinset_url", args, environ)
    if url is None:
        for name in ("pinset_pubkey", "pinset_refresh", "pinset_cache", "on_stale"):
            if (given := _given(name, args, environ)) is not None:
                raise PinproxyError(f"{given} only applies with --pinset-url")
        return
    if (pinset := _given("pinset", args, environ)) is not None:
        raise PinproxyError(f"{pinset} and {url} are two sources of pins: give one (a signed "
                            "pinset is bootstrapped from --pinset-cache, not from a file)")
    key = _given("pinset_pubkey", args, environ)
    if key is None or config.pinset_pubkey is None:
        raise PinproxyError(f"{url} needs --pinset-pubkey: the public key that signs the pinset")
    try:
        parse_pubkey(config.pinset_pubkey)
    except PinproxyError as e:
        raise PinproxyError(f"{key}: {e}") from None
    cache = config.pinset_cache
    if cache is not None and os.path.exists(cache) and not os.path.isdir(cache):
        raise PinproxyError(f"{_given('pinset_cache', args, environ)} {cache!r} is not a "
                            "directory")


def _warn_at_start(config: RunConfig, environ: Mapping[str, str]) -> None:
    """What the operator should know but that does not stop the proxy (logged, so JSON logs
    stay JSON)."""
    if unknown := unknown_variables(environ):
        log.warning("ignoring unknown variable(s) %s (run settings are %s<FLAG>; see "
                    "'pinproxy run --help')", ", ".join(unknown), ENV_PREFIX)
    if not config.proxy_auth and not is_loopback(config.listen_host):  # allowed by the switch
        log.warning("listening on %s without --proxy-auth (--allow-unauthenticated): anyone who "
                    "can reach the port can use this proxy", config.listen_host)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; no other name is resolved (it could resolve anywhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _refuse_open_proxy(config: RunConfig) -> None:
    """An open proxy is an egress hole for anyone who can reach the port: refuse one by default."""
    if config.proxy_auth or is_loopback(config.listen_host):
        return
    if not config.allow_unauthenticated:
        raise PinproxyError(
            f"refusing to listen on {config.listen_host} without --proxy-auth: anyone who can "
            "reach the port could use this proxy; give --proxy-auth, or --allow-unauthenticated "
            "to accept that")


def _serve(config: RunConfig, worker: str = "", status_fd: int | None = None) -> int:
    from pinproxy.proxy.serve import serve

    # The process is the proxy's: a pinset loading in a thread must hand the GIL back to the
    # event loop often (the default 5 ms switch interval holds traffic for long stretches).
    sys.setswitchinterval(_SWITCH_INTERVAL)
    return asyncio.run(serve(config, worker, load=load_without_full_collections,
                             status_fd=status_fd))


def load_without_full_collections(path: str | Path) -> Pinset:
    """Load a pinset with the cycle collector's full collections held off.

    Each full collection would scan every object of the process, the growing pinset included,
    to find nothing (the loader makes no cycles), with the event loop held when the load runs
    in the background. Young collections go on, so the proxy still collects its own garbage.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, _NO_FULL_COLLECTIONS)
    try:
        return load_pinset(path)
    finally:
        if gc.get_threshold()[2] == _NO_FULL_COLLECTIONS:  # unless someone set it meanwhile
            gc.set_threshold(young, middle, old)


def _supervisor_pinset(config: RunConfig) -> str:
    """The file the supervisor's /pinset names: with --pinset-url, the cache (each worker
    fetches and verifies for itself), or none."""
    if config.pinset_url is None:
        return config.pinset
    return os.path.join(config.pinset_cache, CACHE_NAME) if config.pinset_cache else ""


def _supervise(config: RunConfig) -> int:
    """Check what every worker would check, once, then start the workers on one port."""
    from pinproxy.proxy.workers import (
        metrics_directory,
        reserve_port,
        supervise,
        validate_pinset,
    )

    # A bad pinset: one set of messages, not one per worker. Checked in a child process, so the
    # supervisor does not keep a parsed pinset (up to 100+ MB) that it never uses.
    if not config.pinset_url and (code := validate_pinset(
            config.pinset, lambda path: require_learn_file(load_pinset(path),
                                                           config.learn_file))):
        return code
    with (metrics_directory() as metrics_dir,
          reserve_port(config.listen_host, config.listen_port) as reserved):
        # The supervisor alone serves the admin endpoint: workers never bind it.
        shared = replace(config, listen_port=reserved.getsockname()[1], admin_listen="off")
        command = [sys.executable, "-m", "pinproxy", "run", "--worker"]
        return supervise([[*command, f"{i}/{config.workers}"]
                          for i in range(1, config.workers + 1)], shared.to_json(),
                         pinset=_supervisor_pinset(config), drain_timeout=config.drain_timeout,
                         admin=config.admin_address, metrics_dir=metrics_dir)
