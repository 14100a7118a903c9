"""The guard over the private mitmproxy and pyOpenSSL names pinproxy uses: it passes on the
installed versions, and stops pinproxy with one clear error when a name is gone or changed."""

from __future__ import annotations

import asyncio
import inspect
import types
from typing import Any

import pytest
from mitmproxy import addonmanager, master, options
from mitmproxy.proxy import mode_servers
from OpenSSL import SSL

from pinproxy.errors import PinproxyError
from pinproxy.proxy import _mitmproxy_private, _openssl
from pinproxy.proxy.addon import Pinning
from pinproxy.proxy.master import build_master


def test_the_installed_mitmproxy_and_pyopenssl_pass() -> None:
    _mitmproxy_private.check()
    _openssl.check()


class Manager:
    def _iter_hooks(self, addon: Any, event: Any) -> Any: ...
    def _configure_all(self, updated: Any) -> None: ...


class Renamed:
    def _iter_hooks_for(self, addon: Any, event: Any) -> Any: ...
    def _configure_all(self, updated: Any) -> None: ...


class Changed:
    def _iter_hooks(self, addon: Any, event: Any, extra: Any) -> Any: ...
    def _configure_all(self, updated: Any) -> None: ...


class Reordered:
    def _iter_hooks(self, event: Any, addon: Any) -> Any: ...
    def _configure_all(self, updated: Any) -> None: ...


class Extended:  # a new argument with a default still works
    def _iter_hooks(self, addon: Any, event: Any, deep: bool = True) -> Any: ...
    def _configure_all(self, updated: Any, *more: Any) -> None: ...


class NoListen:
    pass


@pytest.mark.parametrize(("stand_in", "message"), [
    ({"manager": Renamed}, r"Renamed\._iter_hooks is gone"),
    ({"manager": Changed}, r"Changed\._iter_hooks now takes \(self, addon, event, extra\)"),
    ({"manager": Reordered}, r"Reordered\._iter_hooks now takes \(self, event, addon\)"),
    ({"instance": NoListen}, r"NoListen\.listen is gone"),
])
def test_a_changed_mitmproxy_fails_loudly(stand_in: dict[str, Any], message: str) -> None:
    with pytest.raises(PinproxyError, match=message) as raised:
        _mitmproxy_private.check(**stand_in)
    assert "mitmproxy 12.3.1 is not supported" in str(raised.value)
    assert "checked against mitmproxy 12.3.1" in str(raised.value)


def test_compatible_stand_ins_pass() -> None:
    _mitmproxy_private.check(manager=Manager)
    _mitmproxy_private.check(manager=Extended)


def test_build_master_refuses_a_mitmproxy_without_the_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def build() -> master.Master:
        return build_master(options.Options(), Pinning())

    assert asyncio.run(build()) is not None  # twin: the installed mitmproxy builds
    monkeypatch.delattr(addonmanager.AddonManager, "_iter_hooks")
    with pytest.raises(PinproxyError, match=r"AddonManager\._iter_hooks is gone"):
        asyncio.run(build())


def test_detaching_a_manager_that_hears_nothing_fails_loudly() -> None:
    async def test() -> None:
        opts = options.Options()
        proxy = master.Master(opts)
        _mitmproxy_private.detach_addon_manager(opts, proxy.addons)
        with pytest.raises(PinproxyError, match="removed no receiver"):
            _mitmproxy_private.detach_addon_manager(opts, proxy.addons)

    asyncio.run(test())


def test_reuse_port_replaces_the_listener_with_a_compatible_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = mode_servers.RegularInstance.listen
    monkeypatch.setattr(mode_servers.RegularInstance, "listen", original)  # restored after
    _mitmproxy_private.enable_reuse_port()
    replaced = mode_servers.RegularInstance.listen
    assert replaced is not original and inspect.iscoroutinefunction(replaced)
    _mitmproxy_private.check()  # the replacement keeps the signature mitmproxy calls
    monkeypatch.setattr(mode_servers.AsyncioServerInstance, "handle_stream", None)
    with pytest.raises(PinproxyError, match=r"RegularInstance\.handle_stream is gone"):
        _mitmproxy_private.enable_reuse_port()


# -- pyOpenSSL -----------------------------------------------------------------------------

def ssl_stand_in(**changes: Any) -> types.SimpleNamespace:
    """The parts of `OpenSSL.SSL` `_openssl.check` looks at, with `changes` applied."""
    lib = types.SimpleNamespace(**{name: getattr(SSL._lib, name)  # type: ignore[attr-defined]
                                   for name in _openssl._FUNCTIONS})
    parts: dict[str, Any] = {"_lib": lib, "_ffi": SSL._ffi,  # type: ignore[attr-defined]
                             "Connection": SSL.Connection, "Context": SSL.Context,
                             "TLS_CLIENT_METHOD": SSL.TLS_CLIENT_METHOD}
    parts.update(changes)
    return types.SimpleNamespace(**parts)


class NoPointer:
    def __init__(self, context: object) -> None:
        self.context = context


def test_a_complete_pyopenssl_stand_in_passes() -> None:
    _openssl.check(ssl_stand_in())


@pytest.mark.parametrize(("changes", "missing"), [
    ({"_lib": None}, "SSL._lib"),
    ({"_ffi": None}, "SSL._ffi"),
    ({"_ffi": types.SimpleNamespace()}, "SSL._ffi.string"),
    ({"_lib": types.SimpleNamespace(SSL_get0_param=None)}, "SSL._lib.X509_VERIFY_PARAM_set1_host"),
    ({"Connection": NoPointer}, "SSL.Connection._ssl"),
])
def test_a_changed_pyopenssl_fails_loudly(changes: dict[str, Any], missing: str) -> None:
    with pytest.raises(PinproxyError, match="is not supported") as raised:
        _openssl.check(ssl_stand_in(**changes))
    assert missing in str(raised.value) and "checked against pyOpenSSL 26.4.0" in str(raised.value)
