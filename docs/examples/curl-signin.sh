#!/usr/bin/env bash
# A whole sign-in with curl and jq, no token pasted by hand: register, the code typed in, verify, profile,
# refresh, profile with the new access token, logout, and the proof that its refresh and access tokens are dead.
#
#   docs/examples/curl-signin.sh alice@example.com          # or a mobile: +14155552671
#   BASE_URL=https://login.example.com docs/examples/curl-signin.sh alice@example.com
#
# BASE_URL defaults to the native stack's nginx (make up): http://127.0.0.1:8080. The code is read from standard
# input, so it can come from a person at the terminal or from another program. Tokens live only in this shell's
# variables; nothing is written to disk. Needs curl and jq.
set -o errexit -o nounset -o pipefail

BASE_URL="${BASE_URL:-http://127.0.0.1:8080}"
address="${1:?usage: $0 EMAIL-OR-MOBILE}"
field=email
[[ "$address" == +* ]] && field=mobile

body_file="$(mktemp)"
trap 'rm -f "$body_file"' EXIT

# call METHOD PATH [JSON] [ACCESS]: sets $status and $body. Every answer of the API is JSON (or empty, for 205).
call() {
  local args=(--silent --show-error --request "$1" --output "$body_file" --write-out '%{http_code}'
              --header 'Accept: application/json')
  [ -n "${3:-}" ] && args+=(--header 'Content-Type: application/json' --data "$3")
  [ -n "${4:-}" ] && args+=(--header "Authorization: Bearer $4")
  local rc=0
  status="$(curl "${args[@]}" "$BASE_URL$2")" || rc=$?
  if [ "$rc" = 7 ]; then  # curl: failed to connect
    echo "Nothing answers at $BASE_URL: start the service (make up), or set BASE_URL to where it runs" \
         "(BASE_URL=http://127.0.0.1:8000 for make run)." >&2
    exit 7
  fi
  [ "$rc" = 0 ] || exit "$rc"
  body="$(cat "$body_file")"
}

# expect STATUS WHAT: stop with the API's own words ({"detail", "code"}, or field errors) on any other status.
expect() {
  if [ "$status" != "$1" ]; then
    echo "$2 failed: HTTP $status $body" >&2
    [ "$status" = 429 ] && echo "(throttled: wait as Retry-After says, then run again)" >&2
    exit 1
  fi
}

# 1. Ask for a code. jq builds the JSON, so an address with quotes or spaces cannot break it.
call POST /register/ "$(jq -n --arg f "$field" --arg a "$address" '{($f): $a}')"
expect 202 "register"
echo "A code is on its way by $(jq -r .channel <<<"$body"); it expires in $(jq -r .expires_in <<<"$body") s."

# 2. The code, as the person received it (spaces or dashes between the digits are fine).
printf 'Code: ' >&2
read -r code

# 3. Trade it for tokens.
call POST /verify-otp/ "$(jq -n --arg f "$field" --arg a "$address" --arg c "$code" '{($f): $a, code: $c}')"
expect 200 "verify"
access="$(jq -r .access <<<"$body")"
refresh="$(jq -r .refresh <<<"$body")"
echo "Signed in; the access token lasts $(jq -r .expires_in <<<"$body") s."

# 4. A protected route, with the access token.
call GET /profile/ "" "$access"
expect 200 "profile"
echo "Profile: $(jq -c '{id, email, mobile}' <<<"$body")"

# 5. Refresh: the answer holds a new access token AND a new refresh token; the old refresh token is now dead.
#    Refresh one at a time: of two refreshes with one token only one wins.
call POST /token/refresh/ "$(jq -n --arg r "$refresh" '{refresh: $r}')"
expect 200 "refresh"
access="$(jq -r .access <<<"$body")"
refresh="$(jq -r .refresh <<<"$body")"
call GET /profile/ "" "$access"
expect 200 "profile with the refreshed token"
echo "Refreshed; the profile still answers with the new access token."

# 6. Log out with the refresh token alone: 205 and no body.
call POST /logout/ "$(jq -n --arg r "$refresh" '{refresh: $r}')"
expect 205 "logout"
echo "Logged out."

# 7. The refresh token no longer works, and neither do the access tokens of this sign-in (docs/api.md, /logout/).
call POST /token/refresh/ "$(jq -n --arg r "$refresh" '{refresh: $r}')"
expect 401 "refresh after logout"
echo "The refresh token is refused after logout: $(jq -r .code <<<"$body")."
call GET /profile/ "" "$access"
expect 401 "profile after logout"
echo "So is the access token: $(jq -r .code <<<"$body")."
