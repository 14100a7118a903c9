"""The running proxy: one event loop with mitmproxy's Master, the pinning addon and signals."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal

from mitmproxy import exceptions, options

from pinproxy.errors import PinproxyError
from pinproxy.proxy.addon import Pinning
from pinproxy.proxy.master import build_master

__all__ = ["serve"]


async def serve(args: argparse.Namespace) -> int:
    logging.getLogger("pinproxy").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.worker:
        from pinproxy.proxy.workers import enable_reuse_port

        enable_reuse_port()
    opts = options.Options()
    addon = Pinning(label=f"worker {args.worker}" if args.worker else "")
    master = build_master(opts, addon)
    try:
        # Set every option in one update, after all addons are added: each addon's configure
        # then sees the final values together (and ours can refuse a bypassing combination).
        opts.update(
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            confdir=args.confdir,
            mode=["regular"],
            connection_strategy="eager",
            http3=False,
            ssl_verify_upstream_trusted_ca=args.upstream_ca,
            termlog_verbosity="debug" if args.verbose else "info",
            pinset=args.pinset,
            pinset_report_log=args.report_log or "",
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
    # What start-up made, the pinset above all, lives as long as the process (or until a
    # reload): out of the cycle collector's full scans, which would walk a 100 000-rule
    # pinset's million objects each time (about 0.3 s, with traffic held).
    gc.collect()
    gc.freeze()
    await master.run()
    return 0
