#!/bin/sh
# The official image's /docker-entrypoint.d/20-envsubst-on-templates.sh, in behaviour (not its code): every
# /etc/nginx/templates/**/*.template becomes /etc/nginx/conf.d/** without the suffix, with ${NAME} replaced for the
# variables defined in the environment only (nginx's own $variables stay as they are). Its stream templates
# (*.stream-template) are left out: the compose file has none.
set -eu
me=$(basename "$0")
log() {
  [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"
}
template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
[ -d "$template_dir" ] || exit 0
if [ ! -w "$output_dir" ]; then
  log "$me: ERROR: $template_dir exists, but $output_dir is not writable"
  exit 0
fi
defined_envs=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
  relative="${template#"$template_dir/"}"
  output="$output_dir/${relative%"$suffix"}"
  mkdir -p "$(dirname "$output")"
  log "$me: Running envsubst on $template to $output"
  envsubst "$defined_envs" < "$template" > "$output"
done
