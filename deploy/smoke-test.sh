#!/bin/sh
# The container image's commands, run without a container engine (`make smoke-image`):
#   1. build the wheel as the Dockerfile's builder stage does (pip wheel --no-deps);
#   2. install it into a fresh venv (scripts/find-python) as the final stage does
#      (--only-binary=:all:, dependencies from PyPI);
#   3. run the build-time `pinproxy check`, then the ENTRYPOINT + CMD with the image's ENV
#      (PINPROXY_*), its paths remapped into a temporary directory and its ports to free ones;
#   4. wait for the HEALTHCHECK command to pass and /readyz to answer 200, send SIGTERM and
#      expect exit 0 within the drain timeout.
# What it cannot check: the image itself (base image, USER, file ownership, VOLUME, signals
# to PID 1). Those need a container engine: docker build . && docker run.
#
# Options:
#   --deps-from PYTHON  do not install dependencies from PyPI: the fresh venv sees PYTHON's
#                       site-packages (a .pth), and only the wheel is installed (--no-deps).
#                       Quick; what tests/test_deploy.py's e2e test uses.
#   --keep              leave the temporary directory for a look afterwards.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
deps_from=""
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --deps-from) deps_from=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "smoke-test: unknown option '$1'" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/pinproxy-smoke.XXXXXX")
cleanup() { if [ -z "$keep" ]; then rm -rf "$work"; else echo "smoke-test: left $work"; fi; }
trap cleanup EXIT
python=$("$root/scripts/find-python")

echo "smoke-test: building the wheel (the builder stage)"
# The builder stage copies these into /src: build from a copy with only them, so nothing else
# of the work tree (a stray egg-info, build/) can end up in the wheel.
mkdir -p "$work/src"
cp -R "$root/pyproject.toml" "$root/README.md" "$root/LICENSE" "$root/pinproxy" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"${deps_from:-$python}" -m pip wheel --quiet --no-cache-dir --no-deps \
    --wheel-dir "$work/wheels" "$work/src"

echo "smoke-test: installing it into a fresh venv (the final stage)"
"$python" -m venv "$work/venv"
if [ -n "$deps_from" ]; then
    site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    "$deps_from" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
        > "$site/zz-smoke-deps.pth"
    "$work/venv/bin/python" -m pip install --quiet --no-cache-dir --no-deps \
        "$work"/wheels/pinproxy-*.whl
else
    "$work/venv/bin/python" -m pip install --quiet --no-cache-dir --only-binary=:all: \
        "$work"/wheels/pinproxy-*.whl
fi

echo "smoke-test: running the image's commands"
exec_python="$work/venv/bin/python"
# Everything from here on runs from the temporary directory: the work tree's pinproxy/ must not
# be importable, or the test would run the sources instead of the installed wheel.
cd "$work"
"$exec_python" - "$root" "$work" <<'PY'
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

root, work = Path(sys.argv[1]), Path(sys.argv[2])
bin_dir = work / "venv" / "bin"
image_root = work / "image"  # "/" of the image


def fail(message: str) -> None:
    print(f"smoke-test: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def final_stage(text: str) -> list[tuple[str, str]]:
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        name, _, arguments = pending.partition(" ")
        instructions.append((name.upper(), arguments.strip()))
        pending = ""
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[start:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remap(path: str) -> str:
    return str(image_root / path.lstrip("/")) if path.startswith("/") else path


stage = final_stage((root / "Dockerfile").read_text())
env_image: dict[str, str] = {}
for name, arguments in stage:
    if name == "ENV":
        for item in shlex.split(arguments):
            key, _, value = item.partition("=")
            env_image[key] = value
(entrypoint,) = [json.loads(a) for n, a in stage if n == "ENTRYPOINT"]
(cmd,) = [json.loads(a) for n, a in stage if n == "CMD"]
(healthcheck,) = [a for n, a in stage if n == "HEALTHCHECK"]
health_command = json.loads(healthcheck[healthcheck.index("CMD ") + 4:])
(workdir,) = [a for n, a in stage if n == "WORKDIR"]

# The image's files: the pinset the COPY puts in place, the CA directory `install -d` makes.
env = {key: remap(value) for key, value in env_image.items()}
pinset = Path(env["PINPROXY_PINSET"])
pinset.parent.mkdir(parents=True)
pinset.write_bytes((root / "config" / "pins.yaml").read_bytes())
Path(env["PINPROXY_CONFDIR"]).mkdir(mode=0o700, parents=True)
cwd = Path(remap(workdir))
cwd.mkdir(parents=True, exist_ok=True)
# Free ports, on loopback only (nothing here may listen beyond it).
env["PINPROXY_LISTEN_PORT"] = str(free_port())
admin_port = free_port()
env["PINPROXY_ADMIN_LISTEN"] = f"127.0.0.1:{admin_port}"
env.update(PATH=f"{bin_dir}:/usr/bin:/bin", HOME=str(work / "home"), LANG="C.UTF-8")
print("smoke-test: image environment (remapped):")
for key in sorted(k for k in env if k.startswith("PINPROXY_")):
    print(f"    {key}={env[key]}")

# RUN pinproxy check /etc/pinproxy/pins.yaml (the build-time check)
check = subprocess.run([str(bin_dir / "pinproxy"), "check", str(pinset)], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=120, check=False)
if check.returncode != 0:
    fail(f"pinproxy check: {check.stdout}{check.stderr}")

argv = [str(bin_dir / entrypoint[0]), *entrypoint[1:], *cmd]
print(f"smoke-test: starting {shlex.join([entrypoint[0], *entrypoint[1:], *cmd])}")
log = (work / "pinproxy.log").open("wb")
proxy = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def stop() -> None:
    if proxy.poll() is None:
        proxy.kill()
        proxy.wait()
    print((work / "pinproxy.log").read_text(errors="replace"), file=sys.stderr)


def health() -> int:
    command = [str(bin_dir / health_command[0]), *health_command[1:]]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, timeout=30,
                          check=False).returncode


def readyz() -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{admin_port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


try:
    deadline = time.monotonic() + 60
    while health() != 0:
        if proxy.poll() is not None:
            fail(f"pinproxy exited with {proxy.returncode} before /healthz passed")
        if time.monotonic() > deadline:
            fail("the HEALTHCHECK command did not pass within 60 s")
        time.sleep(0.2)
    print("smoke-test: HEALTHCHECK passes")
    while (status := readyz()) != 200:
        if proxy.poll() is not None or time.monotonic() > deadline:
            fail(f"/readyz answered {status}, never 200")
        time.sleep(0.2)
    print("smoke-test: /readyz 200")
    ca_cert = Path(env["PINPROXY_CONFDIR"]) / "mitmproxy-ca-cert.pem"
    if not ca_cert.read_text().startswith("-----BEGIN CERTIFICATE-----"):
        fail(f"{ca_cert} is not the CA certificate")
    drain = float(env.get("PINPROXY_DRAIN_TIMEOUT", "10"))
    proxy.send_signal(signal.SIGTERM)
    try:
        code = proxy.wait(timeout=drain + 10)
    except subprocess.TimeoutExpired:
        fail(f"still running {drain + 10:g} s after SIGTERM")
    if code != 0:
        fail(f"exit status {code} after SIGTERM, not 0")
    print("smoke-test: SIGTERM: exit 0")
except SystemExit:
    stop()
    raise
print("smoke-test: passed")
PY
