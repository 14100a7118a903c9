"""The running proxy: one event loop with mitmproxy's Master, the pinning addon and signals."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import exceptions, log, options

from pinproxy import logs, metrics
from pinproxy.admin import AdminServer
from pinproxy.config import RunConfig
from pinproxy.errors import PinproxyError
from pinproxy.loader import load_pinset
from pinproxy.pinset import Pinset
from pinproxy.proxy.addon import Pinning
from pinproxy.proxy.master import build_master

__all__ = ["serve"]


async def serve(config: RunConfig, worker: str = "",
                load: Callable[[str], Pinset] = load_pinset) -> int:
    """Serve until a signal stops the proxy. `worker` ("i/N") marks one of `--workers N`;
    `load` reads a pinset file (the run command's, tuned for the process it owns)."""
    logs.configure(config.log_level, config.log_format, text=log.MitmFormatter(colorize=False))
    if worker:
        from pinproxy.proxy.workers import enable_reuse_port

        enable_reuse_port()
    opts = options.Options()
    addon = Pinning(label=f"worker {worker}" if worker else "", load=load)
    master = build_master(opts, addon)
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
            pinset=config.pinset,
            pinset_report_log=config.report_log or "",
        )
    except exceptions.OptionsError as e:
        if isinstance(e.__cause__, PinproxyError):
            raise e.__cause__ from None
        raise PinproxyError(str(e)) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    reloads: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def reload() -> None:  # SIGHUP; a bad file is logged and the old pinset stays
        task = loop.create_task(addon.reload_in_background())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
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
    return 0


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
