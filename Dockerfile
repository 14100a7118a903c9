# pinproxy as a sidecar: `docker run -v pinproxy-ca:/home/pinproxy/.mitmproxy -p 8080:8080 pinproxy`
# The CA private key lives on the volume, never in the image; mount your own pinset over
# /app/config/pins.yaml (or pass --pinset). Listens on 0.0.0.0 only inside the container.
FROM python:3.12-slim

RUN useradd --create-home --uid 10001 pinproxy \
    && mkdir /home/pinproxy/.mitmproxy \
    && chown pinproxy:pinproxy /home/pinproxy/.mitmproxy \
    && chmod 700 /home/pinproxy/.mitmproxy

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pinproxy ./pinproxy
COPY addons ./addons
COPY config ./config
RUN pip install --no-cache-dir . && pinproxy check config/pins.yaml

USER pinproxy
VOLUME ["/home/pinproxy/.mitmproxy"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["pinproxy", "run", "--listen-host", "0.0.0.0", "--listen-port", "8080", \
            "--confdir", "/home/pinproxy/.mitmproxy"]
CMD ["--pinset", "/app/config/pins.yaml"]
