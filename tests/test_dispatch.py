"""`ResolvedHooks` calls exactly the handlers mitmproxy's own AddonManager would, in its order,
with its error handling, on `pinproxy run`'s real addon chain. The end-to-end tests run every
pin check through it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from mitmproxy import exceptions, hooks, master, options
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow

from pinproxy.proxy.addon import Pinning
from pinproxy.proxy.dispatch import ResolvedHooks
from pinproxy.proxy.master import build_master


class Recorder:
    """Records each `client_connected` it gets; can fail or halt instead of recording."""

    def __init__(self, name: str, calls: list[str], fail: bool = False,
                 halt: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail
        self.halt = halt

    async def client_connected(self, client: object) -> None:  # async handlers are awaited
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        if self.halt:
            raise exceptions.AddonHalt
        self.calls.append(self.name)


class Parent:
    """An addon with sub-addons, which mitmproxy calls right after their parent."""

    def __init__(self, calls: list[str]) -> None:
        self.name = "parent"
        self.calls = calls
        self.addons = [Recorder("child", calls)]

    def client_connected(self, client: object) -> None:
        self.calls.append(self.name)


def in_loop[T](test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Master wants a running event loop from its construction on."""
    return asyncio.run(test())


def hook_named(name: str) -> hooks.Hook:
    """An instance of a hook, without its arguments: handlers are looked up by name only."""
    cls = hooks.all_hooks[name]
    return cast(hooks.Hook, cls.__new__(cls))


def test_the_run_chain_resolves_every_hook_as_mitmproxy_does() -> None:
    async def test() -> None:
        manager = build_master(options.Options(), Pinning()).addons
        assert isinstance(manager, ResolvedHooks)
        for event in map(hook_named, hooks.all_hooks):
            expected = [func for addon in manager.chain
                        for _, func in manager._iter_hooks(addon, event)]
            assert [func for group in manager.handlers(event) for func in group] == expected
        # the pin check's hooks reach the Pinning addon, after tlsconfig builds the connection
        groups = manager.handlers(hook_named("tls_start_server"))
        owners = [type(cast(Any, group[0]).__self__).__name__ for group in groups]
        assert owners == ["TlsConfig", "Pinning"]
    in_loop(test)


@pytest.mark.parametrize("ours", [True, False], ids=["ResolvedHooks", "mitmproxy's manager"])
def test_order_sub_addons_errors_and_halt_follow_mitmproxy(
        ours: bool, caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> list[str]:
        calls: list[str] = []
        proxy = build_master(options.Options(), Pinning()) if ours else master.Master(None)
        proxy.addons.add(Recorder("first", calls), Recorder("broken", calls, fail=True),
                         Parent(calls), Recorder("halting", calls, halt=True),
                         Recorder("never", calls))
        await proxy.addons.trigger_event(server_hooks.ClientConnectedHook(
            tflow.tclient_conn()))
        return calls

    with caplog.at_level(logging.ERROR):
        assert in_loop(test) == ["first", "parent", "child"]
    assert "Addon error: broken failed" in caplog.text


def test_adding_or_removing_an_addon_resolves_again() -> None:
    async def test() -> list[str]:
        calls: list[str] = []
        addons = build_master(options.Options(), Pinning()).addons
        event = server_hooks.ClientConnectedHook(tflow.tclient_conn())
        await addons.trigger_event(event)  # resolved here, without the recorder
        late = Recorder("late", calls)
        addons.add(late)
        await addons.trigger_event(event)
        addons.remove(late)
        await addons.trigger_event(event)
        return calls

    assert in_loop(test) == ["late"]


def test_mitmproxys_lookups_find_the_run_chains_addons() -> None:
    """What mitmproxy's own addons ask of `master.addons` (`get` by name) still answers."""
    async def test() -> None:
        pinning = Pinning()
        ours = build_master(options.Options(), pinning).addons
        assert ours.get("pinning") is pinning
        assert type(ours.get("tlsconfig")).__name__ == "TlsConfig"
        assert type(ours.get("nextlayer")).__name__ == "NextLayer"
        assert ours.get("dumper") is None  # not in the run chain
    in_loop(test)
