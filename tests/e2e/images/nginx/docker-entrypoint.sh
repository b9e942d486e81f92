#!/bin/sh
# What the official image's entry point does that the compose file relies on (its 20-envsubst-on-templates.sh):
# every /etc/nginx/templates/**/*.template becomes /etc/nginx/conf.d/** without the suffix, with ${NAME} replaced
# for the variables defined in the environment only (nginx's own $variables stay as they are).
set -eu
if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
  template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
  suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
  output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
  defined_envs=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
  if [ -d "$template_dir" ]; then
    find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
      relative="${template#"$template_dir/"}"
      output="$output_dir/${relative%"$suffix"}"
      mkdir -p "$(dirname "$output")"
      echo "$0: rendering $template to $output"
      envsubst "$defined_envs" < "$template" > "$output"
    done
  fi
fi
exec "$@"
