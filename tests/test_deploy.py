"""The deployment files (Dockerfile, compose, Kubernetes manifests, alert rules) against the
schemas they must satisfy and against the code they configure.

No container engine or cluster runs here: the manifests are validated offline against the
Kubernetes schemas, the Dockerfile is linted with hadolint, and every setting that names
something of pinproxy (a PINPROXY_* variable, the admin port and paths, the drain timeout, the
user's UID) is checked against the code, so that a renamed flag breaks a test, not a deployment.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from pinproxy.admin import AdminServer
from pinproxy.cli import parser
from pinproxy.config import RunConfig, host_and_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERNETES_VERSIONS = ("1.29", "1.37")  # the oldest with native sidecars on by default; newest
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it
_VARIABLE = re.compile(r"\bPINPROXY_[A-Z0-9_]+\b")


# --- reading the files ---------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every stage, continuation lines joined, comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        instruction, _, arguments = pending.partition(" ")
        lines.append((instruction.upper(), arguments.strip()))
        pending = ""
    return lines


def final_stage(text: str) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(text)
    starts = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    return instructions[starts[-1]:]


def dockerfile_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in final_stage(text):
        if name == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerfile_one(text: str, instruction: str) -> str:
    found = [arguments for name, arguments in final_stage(text) if name == instruction]
    assert len(found) == 1, f"{instruction}: {found}"
    return found[0]


DOCKERFILE = (ROOT / "Dockerfile").read_text()


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.load_all(f, Loader=_LOADER) if doc is not None]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] == "Deployment":
                yield f"{path.name}:{doc['metadata']['name']}", doc["spec"]["template"]


def containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pinproxy_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in containers(pod) if c["name"] == "pinproxy"]
    return found


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def effective(pod: Mapping[str, Any], container: Mapping[str, Any], key: str) -> Any:
    """A securityContext setting as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod["spec"].get("securityContext", {}).get(key)


def run_flags() -> set[str]:
    """The long options of `pinproxy run` a user may give (the internal --worker excluded)."""
    top = parser()
    (subcommands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    run = subcommands.choices["run"]
    return {option for action in run._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings if option.startswith("--")} - {"--help"}


def variable_of(flag: str) -> str:
    return "PINPROXY_" + flag.removeprefix("--").upper().replace("-", "_")


def unknown_variables(text: str) -> set[str]:
    return set(_VARIABLE.findall(text)) - {variable_of(flag) for flag in run_flags()}


def admin_port(listen: str) -> int:
    return host_and_port(listen)[1]


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_refuses_a_misspelled_field() -> None:
    (deployment,) = [d for d in documents(DEPLOY / "kubernetes" / "sidecar.yaml")
                     if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_the_manifests_are_all_there() -> None:
    assert {p.name for p in MANIFESTS} == {
        "sidecar.yaml", "sidecar-iptables.yaml", "gateway.yaml", "networkpolicy.yaml"}


@pytest.mark.parametrize(("name", "pod"), list(pod_specs()))
def test_pod_runs_pinproxy_hardened(name: str, pod: dict[str, Any]) -> None:
    proxy = pinproxy_container(pod)
    spec = pod["spec"]
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert effective(pod, proxy, "runAsNonRoot") is True
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert proxy["securityContext"]["allowPrivilegeEscalation"] is False
    assert proxy["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= set(proxy["resources"])
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert "/tmp" in mounts  # the one writable place with a read-only root
    volumes = {v["name"]: v for v in spec["volumes"]}
    env = env_of(proxy)
    pinset_dir = str(Path(env["PINPROXY_PINSET"]).parent)
    pinset_mount = mounts[pinset_dir]
    assert "subPath" not in pinset_mount  # ConfigMap updates reach only directory mounts
    assert "configMap" in volumes[pinset_mount["name"]]
    ca_mount = mounts[env["PINPROXY_CONFDIR"]]
    assert "secret" in volumes[ca_mount["name"]] and ca_mount["readOnly"] is True
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == admin_port(env["PINPROXY_ADMIN_LISTEN"])


@pytest.mark.parametrize(("name", "pod"), list(pod_specs()))
def test_probes_use_the_admin_port_and_paths(name: str, pod: dict[str, Any]) -> None:
    proxy = pinproxy_container(pod)
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    listen = env_of(proxy)["PINPROXY_ADMIN_LISTEN"]
    assert not ipaddress.ip_address(host_and_port(listen)[0]).is_loopback  # kubelet: pod IP
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = proxy[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports[get["port"]] == admin_port(listen), probe


@pytest.mark.parametrize(("name", "pod"), list(pod_specs()))
def test_grace_period_outlasts_the_drain(name: str, pod: dict[str, Any]) -> None:
    env = env_of(pinproxy_container(pod))
    drain = float(env.get("PINPROXY_DRAIN_TIMEOUT", RunConfig().drain_timeout))
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain


@pytest.mark.parametrize(("name", "pod"), list(pod_specs()))
def test_pinproxy_runs_as_the_images_user(name: str, pod: dict[str, Any]) -> None:
    uid = dockerfile_uid()
    assert effective(pod, pinproxy_container(pod), "runAsUser") == uid
    for container in pod["spec"]["containers"]:
        if container["name"] != "pinproxy":  # an app with pinproxy's UID would be exempt
            assert effective(pod, container, "runAsUser") not in (uid, 0, None)


@pytest.mark.parametrize(("name", "pod"), list(pod_specs()))
def test_beyond_loopback_only_with_proxy_auth(name: str, pod: dict[str, Any]) -> None:
    env = env_of(pinproxy_container(pod))
    host = env.get("PINPROXY_LISTEN_HOST", RunConfig().listen_host)
    if not ipaddress.ip_address(host).is_loopback:
        assert env["PINPROXY_PROXY_AUTH"].startswith("@")  # an htpasswd file from a Secret
        assert "PINPROXY_ALLOW_UNAUTHENTICATED" not in env


def test_sidecar_is_native() -> None:
    pods = dict(pod_specs())
    for name in ("sidecar.yaml:app", "sidecar-iptables.yaml:app-iptables"):
        init = pods[name]["spec"]["initContainers"]
        sidecar = [c for c in init if c["name"] == "pinproxy"]
        assert sidecar and sidecar[0]["restartPolicy"] == "Always"
        # the iptables init containers run to completion before it
        assert all(c.get("restartPolicy") is None for c in init[:init.index(sidecar[0])])


def test_apps_trust_the_ca_certificate_not_the_key() -> None:
    for name, pod in pod_specs():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for app in pod["spec"]["containers"]:
            if app["name"] == "pinproxy":
                continue
            env = env_of(app)
            assert env["HTTPS_PROXY"] == "http://127.0.0.1:8080", name
            for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
                assert env[variable].endswith("/mitmproxy-ca-cert.pem"), name
            mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
            ca = volumes[mounts[str(Path(env["SSL_CERT_FILE"]).parent)]]
            assert "configMap" in ca, name  # never the Secret with the key


def iptables_rules() -> dict[str, str]:
    (config,) = [d for d in documents(DEPLOY / "kubernetes" / "sidecar-iptables.yaml")
                 if d["kind"] == "ConfigMap"]
    rules: dict[str, str] = config["data"]
    return rules


def test_iptables_exempt_exactly_pinproxys_uid() -> None:
    rules = iptables_rules()
    assert set(rules) == {"rules.v4", "rules.v6"}  # IPv6 too, or the app leaves by it
    for text in rules.values():
        owners = re.findall(r"--uid-owner (\d+)", text)
        assert owners == [str(dockerfile_uid())]
        lines = [line for line in text.splitlines() if line.startswith("-A PINPROXY-OUTPUT")]
        assert "-o lo" in lines[0]
        assert lines[-1].split("-j ")[1].startswith("REJECT")  # everything else refused


def test_iptables_init_containers_load_those_rules() -> None:
    pods = dict(pod_specs())
    pod = pods["sidecar-iptables.yaml:app-iptables"]
    inits = [c for c in pod["spec"]["initContainers"] if c["name"].startswith("egress-rules")]
    assert [c["command"][0] for c in inits] == ["iptables-restore", "ip6tables-restore"]
    for init in inits:
        assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
        assert Path(init["command"][-1]).name in iptables_rules()


def test_network_policies_confine_apps_to_dns_and_the_gateway() -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in
                documents(DEPLOY / "kubernetes" / "networkpolicy.yaml")}
    (service,) = [d for d in documents(DEPLOY / "kubernetes" / "gateway.yaml")
                  if d["kind"] == "Service"]
    proxy_port = service["spec"]["ports"][0]["port"]
    apps = policies["apps-egress-only-through-pinproxy"]
    assert apps["policyTypes"] == ["Egress"]
    ports = sorted((p["protocol"], p["port"]) for rule in apps["egress"] for p in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", proxy_port), ("UDP", 53)]
    assert all("ipBlock" not in peer for rule in apps["egress"] for peer in rule["to"])
    gateway = policies["pinproxy-gateway"]
    assert gateway["podSelector"]["matchLabels"] == service["spec"]["selector"]
    ingress_ports = {p["port"] for rule in gateway["ingress"] for p in rule["ports"]}
    assert ingress_ports == {proxy_port, admin_port(dockerfile_env(DOCKERFILE)
                                                    ["PINPROXY_ADMIN_LISTEN"])}


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_uid() -> int:
    user = dockerfile_one(DOCKERFILE, "USER")
    return int(user.split(":")[0])


def hadolint() -> str:
    return str(Path(sys.executable).parent / "hadolint")


def test_hadolint_passes() -> None:
    result = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install pinproxy\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_image_runs_as_a_fixed_non_root_uid() -> None:
    uid = dockerfile_uid()
    assert uid >= 10000
    assert f"--uid {uid}" in DOCKERFILE
    assert "USER root" not in DOCKERFILE


def test_image_is_built_from_a_wheel_in_a_builder_stage() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    froms = [arguments for name, arguments in instructions if name == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    assert all(":" in base and "latest" not in base for base in froms)  # pinned by tag
    copies = [arguments for name, arguments in final_stage(DOCKERFILE) if name == "COPY"]
    assert any(arguments.startswith("--from=builder /wheels") for arguments in copies)
    assert not any(arguments.split()[0] in ("pinproxy", ".") for arguments in copies)


def test_image_paths_and_settings() -> None:
    env = dockerfile_env(DOCKERFILE)
    copies = [arguments.split() for name, arguments in final_stage(DOCKERFILE) if name == "COPY"]
    assert ["config/pins.yaml", env["PINPROXY_PINSET"]] in copies
    assert json.loads(dockerfile_one(DOCKERFILE, "VOLUME")) == [env["PINPROXY_CONFDIR"]]
    assert ipaddress.ip_address(env["PINPROXY_LISTEN_HOST"]).is_loopback
    assert host_and_port(env["PINPROXY_ADMIN_LISTEN"])[0] == "0.0.0.0"
    exposed = {int(p) for p in dockerfile_one(DOCKERFILE, "EXPOSE").split()}
    assert exposed == {int(env["PINPROXY_LISTEN_PORT"]), admin_port(env["PINPROXY_ADMIN_LISTEN"])}
    assert dockerfile_one(DOCKERFILE, "STOPSIGNAL") == "SIGTERM"
    assert json.loads(dockerfile_one(DOCKERFILE, "ENTRYPOINT")) == ["pinproxy", "run"]


def healthcheck_command() -> list[str]:
    arguments = dockerfile_one(DOCKERFILE, "HEALTHCHECK")
    command: list[str] = json.loads(arguments[arguments.index("CMD ") + 4:])
    assert "--timeout=" in arguments
    return command


class _Source:
    def __init__(self, reason: str | None) -> None:
        self.reason = reason

    def not_ready(self) -> str | None:
        return self.reason

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"

    def pinset(self) -> Mapping[str, Any] | None:
        return None


@pytest.mark.parametrize(("up", "code"), [(True, 0), (False, 1)])
def test_healthcheck_command_probes_healthz(up: bool, code: int) -> None:
    """The image's HEALTHCHECK, run as Docker runs it, against the real admin server: exit 0
    while it serves, 1 when nothing answers on the admin port."""
    command = healthcheck_command()
    assert command[0] == "python" and "/healthz" in command[-1]
    server = AdminServer("127.0.0.1", 0, _Source(None))
    port = server.address[1]
    if not up:
        server.close()
    try:
        result = subprocess.run([sys.executable, *command[1:]], capture_output=True, timeout=30,
                                check=False,
                                env={"PINPROXY_ADMIN_LISTEN": f"0.0.0.0:{port}",
                                     "HTTP_PROXY": "http://127.0.0.1:9"})  # must be ignored
    finally:
        if up:
            server.close()
    assert result.returncode == code, result.stderr


@pytest.mark.parametrize(("reason", "status"), [(None, 200), ("draining: shutting down", 503)])
def test_probe_paths_are_the_admin_servers(reason: str | None, status: int) -> None:
    """The paths the probes name are the ones the admin endpoint serves: /healthz always,
    /readyz only when ready."""
    server = AdminServer("127.0.0.1", 0, _Source(reason))
    base = f"http://127.0.0.1:{server.address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/healthz", timeout=5) as response:
            assert response.status == 200
        try:
            with opener.open(f"{base}/readyz", timeout=5) as response:
                got = response.status
        except urllib.error.HTTPError as e:
            got = e.code
    finally:
        server.close()
    assert got == status


# --- settings by environment ---------------------------------------------------------------------


def deployment_files() -> list[Path]:
    return [ROOT / "Dockerfile", COMPOSE, DEPLOY / "pinproxy.env.example", *MANIFESTS]


@pytest.mark.parametrize("path", deployment_files(), ids=lambda p: p.name)
def test_every_variable_is_a_run_flag(path: Path) -> None:
    assert unknown_variables(path.read_text()) == set()


def test_an_unknown_variable_is_caught() -> None:
    assert unknown_variables("PINPROXY_LISTEN_PORT=1 PINPROXY_LISTEN_PROT=2") == {
        "PINPROXY_LISTEN_PROT"}
    assert variable_of("--admin-listen") == "PINPROXY_ADMIN_LISTEN"
    assert {"--pinset", "--proxy-auth", "--drain-timeout"} <= run_flags()
    assert "--worker" not in run_flags()


# --- docker compose ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    with COMPOSE.open() as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def test_compose_app_starts_after_a_healthy_proxy() -> None:
    services = compose()["services"]
    app, proxy = services["app"], services["pinproxy"]
    assert app["depends_on"]["pinproxy"]["condition"] == "service_healthy"
    assert app["network_mode"] == "service:pinproxy"
    assert "healthcheck" not in proxy  # the image's HEALTHCHECK applies
    assert proxy["depends_on"]["ca-export"]["condition"] == "service_completed_successfully"
    grace = int(proxy["stop_grace_period"].removesuffix("s"))
    assert grace > float(proxy["environment"]["PINPROXY_DRAIN_TIMEOUT"])


def test_compose_wires_the_ca() -> None:
    loaded = compose()
    services = loaded["services"]
    env = dockerfile_env(DOCKERFILE)
    proxy_volumes = {v.split(":")[1]: v.split(":")[0] for v in services["pinproxy"]["volumes"]}
    ca_volume = proxy_volumes[env["PINPROXY_CONFDIR"]]
    export = services["ca-export"]
    assert f"{ca_volume}:{env['PINPROXY_CONFDIR']}" in export["volumes"]
    script = shlex.split(export["entrypoint"][-1])
    assert script[:3] == ["pinproxy", "ca", "export"]
    assert script[script.index("--confdir") + 1] == env["PINPROXY_CONFDIR"]
    output = script[-1]  # the temporary file -o wrote, moved into place
    assert script[script.index("-o") + 1] in script[-3:-1]
    public = {v.split(":")[1]: v.split(":")[0] for v in export["volumes"]}[str(Path(output).parent)]
    app = services["app"]
    app_volumes = {v.split(":")[1]: v for v in app["volumes"]}
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        path = Path(app["environment"][variable])
        assert path.name == Path(output).name
        assert app_volumes[str(path.parent)] == f"{public}:{path.parent}:ro"
    assert all(not v.startswith(f"{ca_volume}:") for v in app["volumes"])  # never the key
    assert {ca_volume, public} <= set(loaded["volumes"])


def test_compose_credentials_come_from_the_env_file() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = (DEPLOY / "pinproxy.env.example").read_text()
    defined = set(re.findall(r"^([A-Z_]+)=", example, flags=re.MULTILINE))
    assert used == defined == {"PROXY_USER", "PROXY_PASSWORD"}
    services = compose()["services"]
    assert services["pinproxy"]["environment"]["PINPROXY_PROXY_AUTH"].startswith(
        "${PROXY_USER:?")
    for variable in ("HTTPS_PROXY", "HTTP_PROXY"):
        assert services["app"]["environment"][variable].startswith(
            "http://${PROXY_USER:?}:${PROXY_PASSWORD:?}@127.0.0.1:")


# --- alert rules ---------------------------------------------------------------------------------


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "deploying.md").read_text()
    return set(re.findall(r"^\| `(pinproxy_[a-z_]+)`", text, flags=re.MULTILINE))


def test_alert_rules_parse_and_name_documented_metrics() -> None:
    with (DEPLOY / "prometheus" / "alerts.yaml").open() as f:
        rules = yaml.safe_load(f)
    (group,) = rules["groups"]
    assert group["name"] == "pinproxy"
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert {"PinproxyRuleExpiringSoon", "PinproxyUpstreamLeafExpiringSoon", "PinproxyViolations",
            "PinproxyPinsetLoadFailed"} <= set(alerts)
    for rule in alerts.values():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in ("warning", "critical")
        used = set(re.findall(r"\bpinproxy_[a-z_]+", rule["expr"]))
        assert used <= documented_metrics(), rule["alert"]
    assert "14 * 86400" in alerts["PinproxyRuleExpiringSoon"]["expr"]


def test_documented_metrics_table() -> None:
    assert {"pinproxy_checks_total", "pinproxy_violations_total",
            "pinproxy_check_duration_seconds", "pinproxy_rule_expiry_timestamp_seconds",
            "pinproxy_upstream_leaf_expiry_timestamp_seconds",
            "pinproxy_pinset_loads_total"} <= documented_metrics()
