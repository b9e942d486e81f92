#!/bin/sh
# The official image's /docker-entrypoint.sh, in behaviour (not its code; nginxinc/docker-nginx, entrypoint/):
# when the command is nginx (or nginx-debug), every file found under /docker-entrypoint.d/ (links followed) is
# taken in version-sort order (`sort -V`): an executable *.sh is run, an executable *.envsh is sourced (what it
# exports reaches the scripts after it, not nginx), anything else is skipped with a line saying so. A script that
# fails stops the container before nginx starts. NGINX_ENTRYPOINT_QUIET_LOGS silences these lines.
set -e
log() {
  [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"
}
if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
  if [ -n "$(find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 -type f -print -quit 2>/dev/null)" ]; then
    log "$0: /docker-entrypoint.d/ is not empty, will attempt to perform configuration"
    log "$0: Looking for shell scripts in /docker-entrypoint.d/"
    # A pipeline, as the official loop is: the loop runs in a subshell, so sourced variables stay in it, and a
    # failing script ends it (set -e) with a status that stops this script too.
    find /docker-entrypoint.d/ -follow -type f -print | sort -V | while read -r script; do
      case "$script" in
        *.envsh)
          if [ -x "$script" ]; then log "$0: Sourcing $script"; . "$script"
          else log "$0: Ignoring $script, not executable"; fi ;;
        *.sh)
          if [ -x "$script" ]; then log "$0: Launching $script"; "$script"
          else log "$0: Ignoring $script, not executable"; fi ;;
        *) log "$0: Ignoring $script" ;;
      esac
    done
    log "$0: Configuration complete; ready for start up"
  else
    log "$0: No files found in /docker-entrypoint.d/, skipping configuration"
  fi
fi
exec "$@"
