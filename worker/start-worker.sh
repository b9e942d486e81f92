#!/usr/bin/env bash
# Starts a Celery worker for the given queues (email, sms, maintenance), natively or in the container.
# Pool and concurrency come from CELERY_WORKER_POOL and CELERY_WORKER_CONCURRENCY through the settings; with the
# latter unset, an email or sms worker runs EMAIL_MAX_CONNECTIONS or SMS_MAX_CONNECTIONS threads (config/celery.py).
set -o errexit -o nounset -o pipefail
queues="${1:?usage: start-worker.sh QUEUES [celery options]}"
shift
cd "$(dirname "$0")/../backend"
exec celery -A config --quiet worker --queues "$queues" --hostname "${queues//,/-}@%h" \
  --without-gossip --without-mingle --loglevel INFO "$@"
