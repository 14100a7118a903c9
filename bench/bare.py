"""A bare mitmproxy `Master`, no pinning: the headroom reference of the benchmark (`bare`).

    python bench/bare.py HOST PORT CONFDIR UPSTREAM_CA

The addon set the issue's calibration names (core, proxyserver, dns_resolver, next_layer,
tlsconfig, errorcheck), with the options `pinproxy run` sets for speed (eager connections, the
stdlib root logger left at WARNING), so bare vs pinproxy shows what pinning and pinproxy's other
two addons (block, disable_h2c) cost.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from mitmproxy import master, options
from mitmproxy.addons import core, dns_resolver, errorcheck, next_layer, proxyserver, tlsconfig


async def _serve(host: str, port: int, confdir: str, upstream_ca: str) -> None:
    opts = options.Options()
    proxy = master.Master(opts, with_termlog=True)
    proxy.addons.add(core.Core(), proxyserver.Proxyserver(), dns_resolver.DnsResolver(),
                     next_layer.NextLayer(), tlsconfig.TlsConfig(), errorcheck.ErrorCheck())
    opts.update(listen_host=host, listen_port=port, confdir=confdir, mode=["regular"],
                connection_strategy="eager", http3=False,
                ssl_verify_upstream_trusted_ca=upstream_ca)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, proxy.shutdown)
    await proxy.run()


if __name__ == "__main__":
    if len(sys.argv) != 5 or not sys.argv[2].isdigit():
        sys.exit(__doc__)
    asyncio.run(_serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
