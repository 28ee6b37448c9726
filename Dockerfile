# GENERATED from deploy/image/operator.toml by `python -m devcluster.images dockerfile --write`:
# edit the recipe, not this file (tests/unit/test_image_recipe.py fails when they differ). The same recipe
# builds this image without a daemon or a registry: `python -m devcluster.images build operator`.
#   docker build -t workspace-secrets-operator:<version> .
# Dependencies are installed into a virtualenv in a build stage; only the virtualenv is copied into the
# runtime stage (no build packages, caches or sources beyond the installed package).
FROM debian:bookworm-slim AS base
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get upgrade -y \
 && apt-get install -y --no-install-recommends ca-certificates python3 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/cache/ldconfig/aux-cache \
 && groupadd --system --gid 65532 wso \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --no-log-init wso

FROM base AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/cache/ldconfig/aux-cache
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/venv/bin/pip install '.[all]' \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/workspace-secrets-operator --version

FROM base
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["workspace-secrets-operator", "run"]
CMD ["--log-format", "json", "--liveness", "http://0.0.0.0:8080/healthz"]
