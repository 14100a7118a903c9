"""Every private mitmproxy name pinproxy uses, why, and a start-up check that they still work.

Checked against mitmproxy 12.3.1 (and written for 12.x; the calls below date from 12.0).
mitmproxy has no public API for any of these. If a new mitmproxy renames or changes one,
`check()` (run by `build_master`, and by `enable_reuse_port` in workers) stops pinproxy with a
`PinproxyError` naming it, rather than letting it run silently slower (hooks dispatched twice,
no SO_REUSEPORT) or, worse, with an addon chain pinproxy did not build.

- `AddonManager._iter_hooks(addon, event)`: the handlers one addon (and its sub-addons) has for
  a hook, exactly as mitmproxy's dispatch finds them. `dispatch.ResolvedHooks` resolves them once
  per chain instead of on every event.
- `AddonManager._configure_all(updated)`: the options-changed receiver that `Master.__init__`
  connects for the manager it creates. `build_master` replaces that manager, so the old one's
  receiver is disconnected (else every option change would be dispatched to it too).
- `mode_servers.RegularInstance.listen(host, port)`: binds the regular-mode listener with
  `asyncio.start_server(handle_stream, host, port)` and no way to ask for SO_REUSEPORT, which
  `pinproxy run --workers` needs to share one port; it is replaced class-wide in worker processes.
- `Proxyserver.connections[client.id]` (the client's `ProxyConnectionHandler`), its
  `transports[connection].handler` (the task reading that connection): cancelling that task is
  how mitmproxy itself closes an idle connection (`ConnectionHandler.on_timeout`), and the only
  way to close one connection from an addon. `close_connection` does it.
- The handler's `timeout_watchdog.callback` (`TimeoutWatchdog(timeout, callback)`): what the
  inactivity watchdog (`tcp_timeout`) awaits when it fires; `on_idle_timeout` wraps it to
  count the connections it closes (no hook says so).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy import addonmanager, connection, hooks, options, version
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import mode_servers, server

from pinproxy.errors import PinproxyError

__all__ = [
    "check",
    "close_connection",
    "detach_addon_manager",
    "enable_reuse_port",
    "iter_hooks",
    "on_idle_timeout",
]

CHECKED_VERSION = "12.3.1"

def iter_hooks(manager: addonmanager.AddonManager, addon: Any,
               event: hooks.Hook) -> Iterator[Callable[..., Any]]:
    """The handlers `addon` and its sub-addons have for `event`, in mitmproxy's order."""
    for _, func in manager._iter_hooks(addon, event):
        yield func


def detach_addon_manager(opts: options.Options, manager: addonmanager.AddonManager) -> None:
    """Stop `manager` (the one `Master.__init__` made) from hearing option changes."""
    before = len(opts.changed.receivers)
    opts.changed.disconnect(manager._configure_all)
    if len(opts.changed.receivers) != before - 1:
        raise _unsupported("Options.changed.disconnect(AddonManager._configure_all) "
                           "removed no receiver")


def enable_reuse_port() -> None:
    """Make mitmproxy's regular-mode listener bind with SO_REUSEPORT (worker processes only)."""
    check()
    instance = mode_servers.RegularInstance

    async def listen(self: mode_servers.RegularInstance, host: str,
                     port: int) -> list[asyncio.Server]:
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]

    instance.listen = listen  # type: ignore[method-assign, assignment]


def close_connection(proxy: proxyserver.Proxyserver, client: connection.Client,
                     conn: connection.Connection, reason: str) -> bool:
    """Close `conn` (the client's own connection, or one of its server connections) the way
    mitmproxy closes an idle one: cancel the task that reads it. False if it is not open."""
    handler = proxy.connections.get(client.id)
    io = handler.transports.get(conn) if handler is not None else None
    if io is None or io.handler is None or io.handler.done():
        return False
    io.handler.cancel(reason)
    return True


def on_idle_timeout(proxy: proxyserver.Proxyserver, client: connection.Client,
                    callback: Callable[[], None]) -> bool:
    """Call `callback` when mitmproxy's inactivity watchdog closes `client`'s connection.
    False if the connection has no handler (any more)."""
    handler = proxy.connections.get(client.id)
    if handler is None:
        return False
    watchdog = handler.timeout_watchdog
    close = watchdog.callback

    async def timed_out() -> None:
        callback()
        await close()

    watchdog.callback = timed_out
    return True


def check(manager: type = addonmanager.AddonManager,
          instance: type = mode_servers.RegularInstance) -> None:
    """Raise `PinproxyError` if a private name above is missing or takes other arguments.

    The arguments are mitmproxy's classes by default; tests pass stand-ins.
    """
    _require_method(manager, "_iter_hooks", ["self", "addon", "event"])
    _require_method(manager, "_configure_all", ["self", "updated"])
    _require_method(instance, "listen", ["self", "host", "port"])
    _require_method(instance, "handle_stream", ["self", "reader", "writer"])
    _require_attribute(proxyserver.Proxyserver, "connections")
    _require_attribute(server.ConnectionHandler, "transports")
    _require_attribute(server.ConnectionIO, "handler")
    _require_method(server.ConnectionHandler, "on_timeout", ["self"])
    _require_attribute(server.ConnectionHandler, "timeout_watchdog")
    _require_method(server.TimeoutWatchdog, "__init__", ["self", "timeout", "callback"])


def _require_attribute(owner: type, name: str) -> None:
    """`owner` declares `name` (an annotated attribute: set in `__init__`, so not on the class)."""
    declared = {n for cls in owner.__mro__ for n in getattr(cls, "__annotations__", {})}
    if name not in declared:
        raise _unsupported(f"{owner.__name__}.{name} is gone")


def _require_method(owner: type, name: str, parameters: list[str]) -> None:
    """`owner.name` exists and takes `parameters` first (and nothing else without a default)."""
    method = getattr(owner, name, None)
    if not callable(method):
        raise _unsupported(f"{owner.__name__}.{name} is gone")
    try:
        found = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        raise _unsupported(f"{owner.__name__}.{name} has no readable signature") from None
    required_extra = [p for p in found[len(parameters):] if p.default is p.empty
                      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if [p.name for p in found[:len(parameters)]] != parameters or required_extra:
        raise _unsupported(f"{owner.__name__}.{name} now takes "
                           f"({', '.join(p.name for p in found)}), not ({', '.join(parameters)})")


def _unsupported(what: str) -> PinproxyError:
    return PinproxyError(
        f"mitmproxy {version.VERSION} is not supported: {what} (pinproxy uses it and was "
        f"checked against mitmproxy {CHECKED_VERSION}); install a supported mitmproxy 12")
