"""The running proxy: one event loop with mitmproxy's Master, the pinning addon and signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import exceptions, log, options

from pinproxy import logs, metrics
from pinproxy.admin import AdminServer
from pinproxy.config import RunConfig
from pinproxy.errors import PinproxyError
from pinproxy.learned import require_learn_file
from pinproxy.loader import load_pinset
from pinproxy.pinset import Pinset
from pinproxy.proxy.addon import Pinning
from pinproxy.proxy.deadlines import Deadlines
from pinproxy.proxy.drain import Drain
from pinproxy.proxy.learning import LearnState
from pinproxy.proxy.master import build_master
from pinproxy.proxy.remote import RemotePinset, RemoteSettings, StaleConnections
from pinproxy.remote import parse_pubkey
from pinproxy.watching import start_watching

__all__ = ["serve"]


async def serve(config: RunConfig, worker: str = "",
                load: Callable[[str], Pinset] = load_pinset, status_fd: int | None = None) -> int:
    """Serve until a signal stops the proxy. `worker` ("i/N") marks one of `--workers N`;
    `load` reads a pinset file (the run command's, tuned for the process it owns);
    `status_fd`, a worker's pipe to its supervisor, gets "ready" once the proxy serves."""
    logs.configure(config.log_level, config.log_format, text=log.MitmFormatter(colorize=False))
    if worker:
        from pinproxy.proxy.workers import enable_reuse_port

        enable_reuse_port()
    opts = options.Options()
    learn_file = config.learn_file
    addon = Pinning(label=f"worker {worker}" if worker else "",
                    load=lambda path: require_learn_file(load(path), learn_file),
                    report_queue=config.report_queue)
    if learn_file is not None:  # a corrupt learn file stops the start (PinsetError)
        addon.learning = LearnState(learn_file)
    master = build_master(opts, addon, config.proxy_auth, Deadlines(
        addon, upstream_timeout=config.upstream_timeout,
        request_head_timeout=config.request_head_timeout,
        max_connections=config.max_connections))
    # -- readiness and drain (SIGTERM: drain, then stop; a second SIGTERM or SIGINT: stop now)
    drain = Drain(addon.readiness, on_ready=lambda: _report_ready(status_fd))
    master.addons.add(drain)
    try:
        # Set every option in one update, after all addons are added: each addon's configure
        # then sees the final values together (and ours can refuse a bypassing combination).
        opts.update(
            listen_host=config.listen_host,
            listen_port=config.listen_port,
            confdir=config.confdir,
            mode=["regular"],
            connection_strategy="eager",
            http3=False,
            ssl_verify_upstream_trusted_ca=config.upstream_ca,
            **({} if config.pinset_url else {"pinset": config.pinset}),  # signed: below
            pinset_report_log=config.report_log or "",
            tcp_timeout=config.idle_timeout,  # mitmproxy's inactivity watchdog
        )
    except exceptions.OptionsError as e:
        if isinstance(e.__cause__, PinproxyError):
            raise e.__cause__ from None
        raise PinproxyError(str(e)) from None
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    async def drain_then_stop() -> None:
        try:
            await drain.drain(config.drain_timeout)
        finally:
            master.shutdown()

    def terminate() -> None:  # SIGTERM: drain first; SIGTERM again: stop at once
        if draining:
            master.shutdown()
        else:
            draining.append(loop.create_task(drain_then_stop()))

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, master.shutdown)  # Ctrl-C: at once
    reloads: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    # --pinset-url: fetched, verified, refreshed; a worker started without one says "ready"
    # once the first arrives (at `running` it could not)
    signed = _signed_pinset(config, addon, master, on_ready=lambda: _report_ready(status_fd))

    def reload() -> None:  # SIGHUP; a bad file is logged and the old pinset stays
        addon.reopen_report_log()  # and the report log follows logrotate's move
        if addon.learning is not None:  # and the learn file is read again (`learned forget`)
            rereading = loop.create_task(addon.learning.reread())
            reloads.add(rereading)
            rereading.add_done_callback(reloads.discard)
        if signed is not None:  # a signed pinset: fetch it now
            signed.refresh_now()
            return
        task = loop.create_task(addon.reload_in_background())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    if not (config.no_watch or config.pinset_url):  # and when its files change (per worker)
        reloads.add(start_watching(config.pinset, addon.pinsets, addon.reload_in_background))
    admin = _start_admin(config, addon) if not worker else None
    # What start-up made, the pinset above all, lives as long as the process (or until a
    # reload): out of the cycle collector's full scans, which would walk a big pinset's
    # objects each time with traffic held (docs/performance.md).
    gc.collect()
    gc.freeze()
    try:
        await master.run()
    finally:
        if admin is not None:
            admin.close()
        if signed is not None:
            await signed.stop()
    return 0


def _signed_pinset(config: RunConfig, addon: Pinning, master: Any,
                   on_ready: Callable[[], None]) -> RemotePinset | None:
    """With `--pinset-url`: the cached pinset in force (verified again), and the refresh task
    started; without a good cache nothing is in force and every connection is refused."""
    if config.pinset_url is None or config.pinset_pubkey is None:
        return None
    settings = RemoteSettings(config.pinset_url, parse_pubkey(config.pinset_pubkey),
                              config.pinset_refresh, config.pinset_cache, config.upstream_ca,
                              config.on_stale)

    def not_ready_because(problem: str) -> None:
        addon.readiness.pinset_problem = problem

    def installed() -> None:
        if addon.readiness.listening and addon.readiness.not_ready() is None:
            on_ready()

    signed = RemotePinset(settings, addon.pinsets, on_problem=not_ready_because,
                          serving=lambda: addon.readiness.listening, on_install=installed)
    master.addons.add(StaleConnections(signed))  # counts (and reports) connections while stale
    if not signed.start_from_cache():
        not_ready_because(f"waiting for the first signed pinset from {config.pinset_url}")
    signed.start()
    return signed


def _report_ready(status_fd: int | None) -> None:
    """Tell the supervisor this worker serves (one line down the pipe it passed)."""
    if status_fd is None:
        return
    try:
        os.write(status_fd, b"ready\n")
    except OSError as e:  # the supervisor is gone: nothing to tell
        logging.getLogger(__name__).debug("could not report readiness: %s", e)


class _AdminView:
    """What the admin endpoint shows of this process (a `pinproxy.admin.AdminSource`)."""

    def __init__(self, addon: Pinning) -> None:
        self._addon = addon

    def not_ready(self) -> str | None:
        return self._addon.readiness.not_ready()

    def metrics(self) -> tuple[bytes, str]:
        return metrics.exposition()

    def pinset(self) -> Mapping[str, Any] | None:
        return self._addon.summary


def _start_admin(config: RunConfig, addon: Pinning) -> AdminServer | None:
    """The admin endpoint of a single-process proxy (the `--workers` supervisor serves its own);
    a port that cannot be bound raises `PinproxyError`."""
    address = config.admin_address
    if address is None:
        return None
    admin = AdminServer(*address, _AdminView(addon))
    host, port = admin.address
    addon.admin_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return admin
