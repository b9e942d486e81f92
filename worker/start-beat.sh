#!/usr/bin/env bash
# Starts Celery beat, which enqueues the maintenance job. Run exactly one. Extra arguments go to celery
# (the stacks pass --schedule to keep beat's state file where they keep their other files).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/../backend"
exec celery -A config --quiet beat --loglevel INFO "$@"
