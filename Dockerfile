# casebridge: one image for every role (migrate, api, worker, scheduler, all-in-one).
#   docker build -t casebridge:0.1.0 .
# Config is mounted at /etc/casebridge, data lives in /var/lib/casebridge, secrets come from the
# environment. docs/deploying.md has the rest; docker-compose.yml runs it on PostgreSQL.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: a wheel of casebridge, then a virtualenv holding it and its runtime dependencies
#    (no dev extra). The runtime stage copies the virtualenv alone.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY connectors ./connectors
COPY mappings ./mappings
COPY jobs ./jobs
COPY tools ./tools
RUN python -m venv /opt/casebridge \
    && python -m pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/casebridge/bin/pip install /wheels/casebridge-*.whl

# -- runtime: slim Python, the virtualenv, the example config; runs as an unprivileged user.
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="casebridge" \
      org.opencontainers.image.description="K-12 case-management integration: SIS data in; cases, staff tasks and family messages out" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deploying.md"

ENV PATH=/opt/casebridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CASEBRIDGE_CONFIG=/etc/casebridge/district.yaml \
    DATABASE_URL=sqlite:////var/lib/casebridge/casebridge.db \
    CASEBRIDGE_OUTPUT_DIR=/var/lib/casebridge/out \
    CASEBRIDGE_BIND=0.0.0.0:8000

RUN groupadd --system --gid 10001 casebridge \
    && useradd --system --uid 10001 --gid casebridge --home-dir /var/lib/casebridge \
       --shell /usr/sbin/nologin casebridge \
    && install -d -o casebridge -g casebridge -m 0750 /var/lib/casebridge

COPY --from=builder /opt/casebridge /opt/casebridge
# The example configuration and sample data: `docker run IMAGE casebridge all-in-one --upgrade`
# works as shipped. A district mounts its own over it, read-only.
COPY config /etc/casebridge
COPY docker/entrypoint.sh /usr/local/bin/casebridge-entrypoint

USER 10001:10001
WORKDIR /var/lib/casebridge
EXPOSE 8000
VOLUME ["/var/lib/casebridge"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]

# The entrypoint runs `casebridge db upgrade` first when CASEBRIDGE_MIGRATE=1, then the command.
ENTRYPOINT ["/bin/sh", "/usr/local/bin/casebridge-entrypoint"]
CMD ["casebridge", "serve"]
