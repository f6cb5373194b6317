# syntax=docker/dockerfile:1
# wacall: the service with its embedded simulator. Build: docker build -t wacall .
# Run (simulator, SQLite in a volume):
#   docker run -p 50051:50051 -p 8080:8080 -v wacall:/var/lib/wacall wacall
# Several replicas on PostgreSQL: deploy/compose.yaml, or deploy/k8s for Kubernetes (README "Deploying").
# The SIP front door listens on 5060 (UDP and TCP); its media goes through rtpengine (README "Media engine").
# WebRTC media needs reachable UDP ports (MEDIA-5): use --network=host, or narrow the ephemeral range and publish it:
#   --sysctl net.ipv4.ip_local_port_range="40000 40100" -p 40000-40100:40000-40100/udp

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip
COPY pyproject.toml README.md LICENSE ./
COPY clients/python clients/python
COPY server server
COPY adapters adapters
# Wheels for our two distributions and every dependency, so the final stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./clients/python . \
    && pip wheel --no-cache-dir --wheel-dir /wheels --find-links /wheels wacall

FROM python:3.11-slim-bookworm
# The media engine (README "Media engine"): rtpengine in userspace, started and supervised by wacall on loopback.
# No recommends (rtpengine's recording daemon and utilities): wacall runs the daemon alone.
RUN apt-get update \
    && apt-get install -y --no-install-recommends rtpengine-daemon \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/wacall --create-home wacall
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels wacall && rm -rf /wheels
USER wacall
WORKDIR /var/lib/wacall
ENV WACALL_GRPC_ADDRESS=0.0.0.0:50051 \
    WACALL_HTTP_ADDRESS=0.0.0.0:8080 \
    WACALL_SIP_ADDRESS=0.0.0.0:5060 \
    WACALL_DB=sqlite:////var/lib/wacall/wacall.db \
    WACALL_SIM_STATE=/var/lib/wacall/simulator.json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/wacall"]
# SIP over TLS is off until it has a certificate: set WACALL_SIP_TLS_ADDRESS (0.0.0.0:5061), WACALL_SIP_TLS_CERT and
# WACALL_SIP_TLS_KEY, and publish 5061. The SIP front door takes calls only from the trunks in the config file.
EXPOSE 50051 8080 5060/udp 5060/tcp
# Ready when /readyz answers 200 (the store answers, the upstream is configured); a 503 or no answer raises.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
ENTRYPOINT ["wacall", "serve"]
