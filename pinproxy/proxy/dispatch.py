"""Hook dispatch for `pinproxy run`: each hook's handlers looked up once, not on every event.

mitmproxy's `AddonManager` walks the whole addon chain for every event: for each addon a
`getattr` of the hook, a generator, a `safecall` context and the hook's arguments built again,
and for a flow event a second walk for the `update` hook. A tunnel raises about twenty events,
a request about ten, though most hooks have one handler or none in pinproxy's ten addons, so
the walk is a noticeable share of the proxy's CPU time per tunnel and per keep-alive request
(figures in docs/performance.md).

`pinproxy run`'s chain is fixed once it starts, so the handlers of a hook are resolved on the
hook's first event and kept until an addon is added or removed. Order, error handling (an
addon's exception is logged and the next addon runs) and `AddonHalt` are mitmproxy's own; the
handlers are found by mitmproxy's private `_iter_hooks` (see `_mitmproxy_private`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks

from pinproxy.proxy._mitmproxy_private import iter_hooks

__all__ = ["ResolvedHooks"]

# Per addon of the chain that handles the hook: its handlers (itself and its sub-addons).
_Handlers = tuple[tuple[Callable[..., Any], ...], ...]


class ResolvedHooks(addonmanager.AddonManager):
    """An `AddonManager` that resolves each hook's handlers once per addon chain."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._resolved: dict[str, _Handlers] = {}

    def handlers(self, event: hooks.Hook) -> _Handlers:
        """The handlers of this event's hook, grouped by addon, in chain order."""
        found = self._resolved.get(event.name)
        if found is None:
            groups = (tuple(iter_hooks(self, addon, event)) for addon in self.chain)
            found = self._resolved[event.name] = tuple(group for group in groups if group)
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        groups = self.handlers(event)
        if not groups:
            return
        args = event.args()
        for group in groups:
            try:
                with addonmanager.safecall():
                    for handler in group:
                        result = handler(*args)
                        if result is not None and inspect.isawaitable(result):
                            await result
            except exceptions.AddonHalt:
                return

    # The chain changes only here; each change forgets what was resolved.

    def add(self, *addons: Any) -> None:
        try:
            super().add(*addons)
        finally:
            self._resolved.clear()

    def remove(self, addon: Any) -> None:
        try:
            super().remove(addon)
        finally:
            self._resolved.clear()

    def clear(self) -> None:
        try:
            super().clear()
        finally:
            self._resolved.clear()
