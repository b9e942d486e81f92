#!/usr/bin/env bash
# Starts the API (gunicorn), natively or in the container. Extra arguments go to gunicorn.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")"
exec gunicorn --config config/gunicorn.conf.py config.wsgi:application "$@"
