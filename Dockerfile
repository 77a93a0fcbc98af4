# casebridge: one container per district, beside its SIS. Config and data are mounted, secrets
# come from the environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CASEBRIDGE_CONFIG=/etc/casebridge/district.yaml \
    DATABASE_URL=sqlite:////var/lib/casebridge/casebridge.db \
    CASEBRIDGE_OUTPUT_DIR=/var/lib/casebridge/out

RUN useradd --create-home --uid 10001 casebridge
WORKDIR /app

# The same install as `make install`, without the dev extra.
COPY pyproject.toml README.md ./
COPY service ./service
COPY connectors ./connectors
COPY mappings ./mappings
COPY jobs ./jobs
RUN pip install .

# The example configuration and sample data, so `docker run ... casebridge demo` works as shipped.
COPY config /etc/casebridge
RUN mkdir -p /var/lib/casebridge && chown casebridge /var/lib/casebridge /etc/casebridge

USER casebridge
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"

# Schema first (idempotent), then the API. Run `casebridge scheduler` in a second container
# from the same image for the nightly sync and the dispatcher.
CMD ["sh", "-c", "casebridge db upgrade && exec gunicorn --bind 0.0.0.0:8000 --workers 2 --access-logfile - service.wsgi:app"]
