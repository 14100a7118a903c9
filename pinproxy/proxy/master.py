"""The mitmproxy `Master` that `pinproxy run` embeds: only what a pinning proxy needs.

`mitmdump` loads about thirty addons and calls each of them on every hook: flow recording, the
dumper, replay, modify/map/export machinery, scripting. A pinning proxy needs the proxy server,
DNS, layer selection, TLS, start-up error checks and its own addon. Fewer addons means less
work per connection and per request, and fewer options that could weaken the check.
"""

from __future__ import annotations

from mitmproxy import master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    errorcheck,
    next_layer,
    proxyserver,
    tlsconfig,
)

from pinproxy.proxy import _mitmproxy_private, _openssl
from pinproxy.proxy.addon import Pinning
from pinproxy.proxy.auth import ProxyAuth
from pinproxy.proxy.deadlines import Deadlines
from pinproxy.proxy.dispatch import ResolvedHooks

__all__ = ["build_master"]


def build_master(opts: options.Options, pinning: Pinning,
                 proxy_auth: str | None = None,
                 deadlines: Deadlines | None = None) -> master.Master:
    """A Master with the minimal addon chain; `pinning` comes last, after `tlsconfig`.

    `deadlines` (timeouts and the connection bound) comes before proxy authentication and
    the pin check: it must see every `client_connected`, and refuse one before anything else
    spends work on it.

    No termlog addon: `pinproxy.logs` puts one handler on the root logger for every record,
    mitmproxy's included (see `serve`). Raises `PinproxyError` if mitmproxy or pyOpenSSL no
    longer has a private name pinproxy uses.
    """
    _mitmproxy_private.check()
    _openssl.check()
    proxy = master.Master(opts)
    # Master makes a plain AddonManager, still empty: swap in the one that resolves hooks once.
    _mitmproxy_private.detach_addon_manager(opts, proxy.addons)
    proxy.addons = ResolvedHooks(proxy)
    proxy.addons.add(
        core.Core(),
        block.Block(),                # refuses clients from public addresses (block_global)
        disable_h2c.DisableH2C(),     # HTTP/2 cleartext upgrades would break the HTTP layer
        proxyserver.Proxyserver(),
        dns_resolver.DnsResolver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(),
        *([deadlines] if deadlines is not None else []),
        ProxyAuth(proxy_auth),        # 407 before anything else answers; strips proxy headers
        pinning,
    )
    return proxy
