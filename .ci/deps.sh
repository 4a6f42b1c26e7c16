#!/usr/bin/env bash
# What the test suite needs beyond .venv, for `make test` and .ci/run alike: the machine's
# PostgreSQL and Redis running (the integration tests), Debian's Chromium (the dashboard's
# browser tests; Playwright's own browser download cannot work offline) and Node.js (the
# dashboard's unit tests). Starts or installs what is missing where it can (as root), else
# stops at once with the exact command to run.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else
    echo "make test needs: sudo $*" >&2
    exit 1
  fi
}

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
