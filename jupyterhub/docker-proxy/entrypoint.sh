#!/bin/sh
# Start haproxy with gpuhub's rules for this project (COMPOSE_PROJECT_NAME) and its
# SHARED_DATA_DIR, which haproxy.cfg matches through GPUHUB_SHARED_DIR_RE: every byte of
# the path written as \xHH, so no character of it can act as a pattern.
set -eu
case "${COMPOSE_PROJECT_NAME:-}" in
  "" | *[!a-z0-9_-]*)
    echo "docker-proxy: COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-} is not a project name; start the stack with \`invoke up\`" >&2
    exit 2 ;;
esac
if [ -n "${SHARED_DATA_DIR:-}" ]; then
  GPUHUB_SHARED_DIR_RE=$(printf '%s' "$SHARED_DATA_DIR" | od -An -v -tx1 | tr -d ' \n' | sed 's/../\\x&/g')
else
  GPUHUB_SHARED_DIR_RE='(?!)'  # matches nothing: no shared folder may be mounted
fi
export GPUHUB_SHARED_DIR_RE
exec haproxy -W -db -f /usr/local/etc/gpuhub/haproxy.cfg
