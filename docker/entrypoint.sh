#!/bin/sh
# The image's entrypoint: with CASEBRIDGE_MIGRATE=1, bring the schema up to date first (a
# single-container install; with several containers, run the one-shot `migrate` service
# instead so replicas never race a migration), then become the command (exec: it gets the
# signals, e.g. SIGTERM from `docker stop`).
set -eu
if [ "${CASEBRIDGE_MIGRATE:-0}" = "1" ]; then
    casebridge db upgrade
fi
exec "$@"
