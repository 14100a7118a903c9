"""The run configuration: one value, serialized whole to every worker."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import trustme

from pinproxy.config import RunConfig
from pinproxy.errors import PinproxyError
from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import curl, start_pinproxy
from tests.upstream import wait_for


def every_setting_changed() -> RunConfig:
    """A configuration in which no setting has its default, whatever settings exist."""
    changed: dict[str, object] = {}
    for field in dataclasses.fields(RunConfig):
        default = field.default
        if isinstance(default, bool):
            changed[field.name] = not default
        elif isinstance(default, float):
            changed[field.name] = default + 0.5
        elif isinstance(default, int):
            changed[field.name] = default + 3
        else:
            changed[field.name] = f"/changed/{field.name}"
    return RunConfig(**changed)  # type: ignore[arg-type]


def test_a_worker_reads_back_every_setting_the_supervisor_wrote() -> None:
    config = every_setting_changed()
    assert all(getattr(config, f.name) != f.default for f in dataclasses.fields(RunConfig))
    assert RunConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(("text", "message"), [
    ("{", "run configuration is not JSON"),
    ("[]", "run configuration is not a JSON object"),
    (json.dumps({**json.loads(RunConfig().to_json()), "extra": 1}),
     "run configuration has the wrong settings: extra"),
    (json.dumps({k: v for k, v in json.loads(RunConfig().to_json()).items() if k != "pinset"}),
     "run configuration has the wrong settings: pinset"),
    (json.dumps({**json.loads(RunConfig().to_json()), "listen_port": True}),
     "setting 'listen_port' has the wrong type: True"),
    (json.dumps({**json.loads(RunConfig().to_json()), "upstream_ca": 7}),
     "setting 'upstream_ca' has the wrong type: 7"),
    (json.dumps({**json.loads(RunConfig().to_json()), "allow_unauthenticated": "yes"}),
     "setting 'allow_unauthenticated' has the wrong type: 'yes'"),
])
def test_anything_but_a_written_configuration_is_refused(text: str, message: str) -> None:
    with pytest.raises(PinproxyError, match=message):
        RunConfig.from_json(text)


@pytest.mark.e2e
def test_every_worker_runs_with_the_supervisors_settings(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(f'version: 1\nhosts:\n  - host: root.pinned.test\n'
                      f'    pins: ["{pki.root_pin}"]\n')
    report_log = tmp_path / "violations.jsonl"
    genuine, rogue = serve(good_leaf), serve(rogue_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2", "--verbose",
                        report_log=report_log) as proxy:
        for label in ("worker 1/2", "worker 2/2"):  # pinset, CA directory
            proxy.wait_for_output(rf"listening on 127\.0\.0\.1:{proxy.port} \({label}\); "
                                  rf"1 host rules, 1 pins from {pinset}; "
                                  rf"clients must trust {confdir}/mitmproxy-ca-cert\.pem")
        # --upstream-ca: the test CA verifies in every worker; --verbose: every worker logs
        # each allowed connection; --report-log: every worker reports each refusal
        assert [curl(proxy, "root.pinned.test", genuine.port).status for _ in range(10)] \
            == [200] * 10
        assert [curl(proxy, "root.pinned.test", rogue.port).status for _ in range(10)] \
            == [502] * 10
        wait_for(lambda: proxy.output().count("action=allowed") == 10)
        wait_for(lambda: len(report_log.read_text().splitlines()) == 10)
