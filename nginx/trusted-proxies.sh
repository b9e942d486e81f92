#!/bin/sh
# In nginx's image (compose mounts this into /docker-entrypoint.d/, which runs it before nginx starts): writes
# /etc/nginx/real-ip.conf from TRUSTED_PROXY_RANGES, as `manage.py nginx_config` writes it natively
# (core.management.commands.nginx_config.real_ip_render; tests/unit/test_nginx_config.py compares the two).
# The API's settings validate the ranges; nginx itself refuses to start on one it cannot read.
set -eu
out="${NGINX_REAL_IP_CONF:-/etc/nginx/real-ip.conf}"
ranges="$(printf '%s' "${TRUSTED_PROXY_RANGES:-}" | tr ',' ' ')"
if [ -z "$(printf '%s' "$ranges" | tr -d ' \t')" ]; then
  printf '%s\n' "# TRUSTED_PROXY_RANGES is empty: clients connect to nginx directly." \
    'geo $otp_from_trusted_proxy {' "    default 0;" "}" >"$out"
  exit 0
fi
: >"$out"
for range in $ranges; do
  echo "set_real_ip_from $range;" >>"$out"
done
printf '%s\n' "real_ip_header X-Forwarded-For;" "real_ip_recursive on;" >>"$out"
# Tested on the connection's own address ($realip_remote_addr), not the client's taken from the header.
{
  echo 'geo $realip_remote_addr $otp_from_trusted_proxy {'
  echo "    default 0;"
  for range in $ranges; do
    echo "    $range 1;"
  done
  echo "}"
} >>"$out"
