# pinproxy's container image: see docs/deploying.md (sidecar, egress gateway, Kubernetes).
#
#   docker run --init -v pinproxy-ca:/var/lib/pinproxy/ca \
#       -v "$PWD/pins.yaml:/etc/pinproxy/pins.yaml:ro" pinproxy
#
# Paths:     /etc/pinproxy/pins.yaml   the pinset (mount yours read-only over it; the shipped
#                                      config/pins.yaml is the default and pins nothing real)
#            /var/lib/pinproxy/ca      the CA directory (a volume: mitmproxy-ca.pem, the key and
#                                      certificate, 0600; mitmproxy-ca-cert.pem, what apps trust)
#            /var/lib/pinproxy/ca-public  empty: where `pinproxy ca export -o` can put the
#                                      certificate for a volume that apps mount (never the key)
# Ports:     8080 the proxy, on 127.0.0.1 by default (a sidecar shares its app's network
#            namespace); 9901 the admin endpoint (/healthz /readyz /metrics /pinset).
# Settings:  every `pinproxy run` flag as PINPROXY_<FLAG> (docker run -e), or as arguments
#            after the image name (a flag wins over its variable).
#
# The base image is pinned by tag. Pin it by digest as well in your own build
# (python:3.12-slim-bookworm@sha256:...): the digest was not resolvable where this file was
# written (no registry access), and a digest copied without checking would be worse than none.

# --- builder: the wheel, built from the source tree; nothing of this stage ships ---------------
FROM python:3.12-slim-bookworm AS builder
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY pinproxy ./pinproxy
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- the image: the wheel and its dependencies (wheels only, no compiler), a non-root user -----
FROM python:3.12-slim-bookworm

# The UID is fixed: the iptables init container of deploy/kubernetes/sidecar-iptables.yaml lets
# only this UID open outbound connections, and the pods' runAsUser names it too.
RUN groupadd --system --gid 10001 pinproxy \
    && useradd --system --uid 10001 --gid pinproxy --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pinproxy \
    && install -d -o pinproxy -g pinproxy -m 0700 /var/lib/pinproxy/ca \
    && install -d -o pinproxy -g pinproxy -m 0755 /var/lib/pinproxy/ca-public

COPY --from=builder /wheels /wheels
# Dependencies come from PyPI as binary wheels only (--only-binary): no sdist runs its build
# code here. Versions float within pyproject.toml's ranges; pin them with a constraints file
# (pip install -c) for reproducible images.
RUN pip install --no-cache-dir --only-binary=:all: /wheels/pinproxy-*.whl \
    && rm -rf /wheels

COPY config/pins.yaml /etc/pinproxy/pins.yaml
RUN pinproxy check /etc/pinproxy/pins.yaml

ENV PYTHONUNBUFFERED=1 \
    PINPROXY_PINSET=/etc/pinproxy/pins.yaml \
    PINPROXY_CONFDIR=/var/lib/pinproxy/ca \
    PINPROXY_LISTEN_HOST=127.0.0.1 \
    PINPROXY_LISTEN_PORT=8080 \
    PINPROXY_ADMIN_LISTEN=0.0.0.0:9901

USER 10001:10001
WORKDIR /var/lib/pinproxy
VOLUME ["/var/lib/pinproxy/ca"]
EXPOSE 8080 9901

# /healthz with the interpreter the image already has: no curl or wget. The port follows
# PINPROXY_ADMIN_LISTEN; the empty ProxyHandler keeps an HTTP_PROXY variable from routing the
# probe elsewhere; a non-2xx answer, a refusal or the timeout all exit 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; port = os.environ.get('PINPROXY_ADMIN_LISTEN', '127.0.0.1:9901').rpartition(':')[2]; u.build_opener(u.ProxyHandler({})).open(f'http://127.0.0.1:{port}/healthz', timeout=3)"]

# Exec form: pinproxy is PID 1 and gets SIGTERM itself (it drains: /readyz 503, in-flight
# requests finish within PINPROXY_DRAIN_TIMEOUT, exit 0). It installs its own SIGTERM/SIGINT
# handlers, and with --workers the supervisor waits on each child it starts, so no zombie is
# left for an init to reap: no tini in the image. `docker run --init` adds one if you want it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pinproxy", "run"]
CMD []
