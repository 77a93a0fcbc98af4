#!/usr/bin/env bash
# The image's entry commands, run from a clean virtualenv.
#
# Builds the wheel the way the Dockerfile's builder stage does, from only the files its COPY lines
# name, installs it into a fresh virtualenv WITHOUT the dev extra, and runs what the Dockerfile and
# docker-compose.yml run (the entrypoint with CASEBRIDGE_MIGRATE=1, `db upgrade`, `check-config`,
# `serve` until the HEALTHCHECK passes, `worker --once`, `scheduler`, and `all-in-one --upgrade`)
# against a temporary copy of config/. This catches a runtime dependency only the dev extra
# brought, package data left out of the wheel, and a directory the Dockerfile forgets to copy.
#
# PostgreSQL (as docker-compose.yml runs it) when a server answers at $CASEBRIDGE_PG_HOST:5432
# (trust auth, user postgres); SQLite otherwise. `make check-entrypoints`; CI runs it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
pg_host=${CASEBRIDGE_PG_HOST:-127.0.0.1}
pg_port=${CASEBRIDGE_PG_PORT:-5432}
deadline=${CHECK_DEADLINE:-120}   # seconds a server gets to answer; only stops a hang
work=$(mktemp -d "${TMPDIR:-/tmp}/casebridge-entrypoints.XXXXXX")
background=()
pg_database=""

step() { printf 'check-entrypoints [%3ds] %s\n' "$SECONDS" "$*"; }
fail() { printf 'check-entrypoints: FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
  for pid in "${background[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ -n "$pg_database" ]; then
    "$work/venv/bin/python" - "$pg_host" "$pg_port" "$pg_database" <<'EOF' || true
import sys, psycopg
host, port, name = sys.argv[1:]
with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as c:
    c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
EOF
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. The builder stage's context: exactly what its COPY lines name, nothing else from the tree.
step "build context from the Dockerfile's builder COPY lines"
mkdir -p "$work/context"
copies=$(awk '/^FROM .* AS builder/ {inside=1; next} /^FROM / {inside=0} inside && /^COPY / && !/--from=/' "$root/Dockerfile")
[ -n "$copies" ] || fail "no COPY lines found in the Dockerfile's builder stage"
while read -r -a words; do
  dest=${words[${#words[@]}-1]}
  for source in "${words[@]:1:${#words[@]}-2}"; do
    cp -R "$root/$source" "$work/context/$dest"
  done
done <<< "$copies"

# 2. Wheel, then a fresh virtualenv with the wheel and its runtime dependencies only.
quietly() {  # pip's output goes to a log, shown when it fails
  "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; fail "$*"; }
}
step "wheel"
quietly "$python" -m pip wheel --no-deps --wheel-dir "$work/wheels" "$work/context"
step "fresh virtualenv, no dev extra"
"$python" -m venv "$work/venv"
quietly "$work/venv/bin/pip" install "$work"/wheels/casebridge-*.whl
if "$work/venv/bin/pip" show --quiet pytest >/dev/null 2>&1; then
  fail "pytest is installed: the check must run without the dev extra"
fi

# 3. The image's layout: config copied from config/, data in its own directory, run from there
#    (not from the source tree, so nothing is imported from the checkout).
cp -R "$root/config" "$work/etc"
mkdir -p "$work/data"
cd "$work/data"
export PATH="$work/venv/bin:$PATH"
export CASEBRIDGE_CONFIG="$work/etc/district.yaml"
export CASEBRIDGE_OUTPUT_DIR="$work/data/out"
unset CASEBRIDGE_PLUGINS PYTHONPATH || true

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_healthy() {  # the image's HEALTHCHECK command, until it passes
  local pid=$1 started=$SECONDS
  until python -m service.healthcheck >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "the server exited before /healthz answered"
    [ $((SECONDS - started)) -lt "$deadline" ] || fail "/healthz did not answer within ${deadline}s"
    sleep 0.5
  done
}

stop() {  # SIGTERM, as docker stop sends; the process must exit 0
  local pid=$1 what=$2 code=0
  kill -TERM "$pid"
  wait "$pid" || code=$?
  [ "$code" -eq 0 ] || fail "$what exited $code after SIGTERM"
}

if python - "$pg_host" "$pg_port" <<'EOF' 2>/dev/null
import sys, psycopg
psycopg.connect(host=sys.argv[1], port=sys.argv[2], user="postgres", dbname="postgres",
                connect_timeout=3).close()
EOF
then
  pg_database="cb_entrypoints_$$"
  python - "$pg_host" "$pg_port" "$pg_database" <<'EOF'
import sys, psycopg
host, port, name = sys.argv[1:]
with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as c:
    c.execute(f"CREATE DATABASE {name}")
EOF
  export DATABASE_URL="postgresql://postgres@$pg_host:$pg_port/$pg_database"
  step "roles on PostgreSQL ($pg_database)"
else
  export DATABASE_URL="sqlite:///$work/data/casebridge.db"
  step "no PostgreSQL at $pg_host:$pg_port: roles on SQLite"
fi

# 4. What the image and docker-compose.yml run.
step "entrypoint with CASEBRIDGE_MIGRATE=1, then check-config"
CASEBRIDGE_MIGRATE=1 sh "$root/docker/entrypoint.sh" casebridge check-config
step "casebridge db upgrade (the migrate service; twice is harmless)"
casebridge db upgrade

step "casebridge serve until the HEALTHCHECK passes"
export CASEBRIDGE_BIND="127.0.0.1:$(free_port)"
casebridge serve --workers 1 --access-log off &
serve_pid=$!
background+=("$serve_pid")
wait_healthy "$serve_pid"

step "sync and evaluate (the scheduler's nightly units), then casebridge worker --once"
casebridge sync >/dev/null
casebridge evaluate >/dev/null
casebridge worker --once
[ -s "$CASEBRIDGE_OUTPUT_DIR/tasks.jsonl" ] || fail "worker --once delivered no staff task"

step "casebridge scheduler until /readyz shows its heartbeat"
casebridge scheduler &
scheduler_pid=$!
background+=("$scheduler_pid")
started=$SECONDS
until python - "http://$CASEBRIDGE_BIND/readyz" "$scheduler_pid" <<'EOF' 2>/dev/null
import json, sys, urllib.request
checks = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))["checks"]
sys.exit(0 if str(checks["scheduler"]["leader"]).endswith(":" + sys.argv[2]) else 1)
EOF
do
  kill -0 "$scheduler_pid" 2>/dev/null || fail "the scheduler exited"
  [ $((SECONDS - started)) -lt "$deadline" ] || fail "no scheduler heartbeat within ${deadline}s"
  sleep 0.5
done
stop "$scheduler_pid" "casebridge scheduler"
stop "$serve_pid" "casebridge serve"

step "casebridge all-in-one --upgrade on a new SQLite database (the evaluation path)"
export DATABASE_URL="sqlite:///$work/data/all-in-one.db"
port=$(free_port)
export CASEBRIDGE_BIND="127.0.0.1:$port"
casebridge all-in-one --upgrade --port "$port" --access-log off >/dev/null &
aio_pid=$!
background+=("$aio_pid")
wait_healthy "$aio_pid"
stop "$aio_pid" "casebridge all-in-one"

step "OK: every entry command runs from a clean virtualenv"
