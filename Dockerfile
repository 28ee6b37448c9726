# The operator's container image; the Helm chart's default image (deploy/helm/workspace-secrets-operator).
#   docker build -t workspace-secrets-operator:0.1.0 .
# Two stages: dependencies are installed into a virtualenv in a build stage, and only that virtualenv is
# copied into the runtime image (no pip, build caches or sources beyond the installed package).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/workspace-secrets-operator --version

FROM python:3.11-slim
# A fixed numeric non-root user, so the kubelet can verify runAsNonRoot (the chart runs as 65532:65532).
RUN groupadd --system --gid 65532 wso \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin wso
COPY --from=build /opt/venv /opt/venv
# No .pyc writes (the chart mounts the root filesystem read-only); unbuffered logs.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
# kopf's liveness endpoint; the webhook (9443), metrics and connect ports are opened only when configured.
EXPOSE 8080
ENTRYPOINT ["workspace-secrets-operator", "run"]
CMD ["--log-format", "json", "--liveness", "http://0.0.0.0:8080/healthz"]
