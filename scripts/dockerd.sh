#!/usr/bin/env bash
# Start or stop a Docker daemon for `make image` / `make e2e` / CI, never touching one we did not start.
#   scripts/dockerd.sh start   -> uses a running daemon if there is one; else (as root) starts dockerd with
#                                 no bridge network and no iptables rules: containers use host networking
#                                 only (docs/containers.md), so no private address range is ever claimed.
#   scripts/dockerd.sh stop    -> stops the daemon only if `start` started it (its pid is in the pid file).
set -euo pipefail
STATE="${SAFEALIGN_DOCKERD_STATE:-${TMPDIR:-/tmp}/safealign-dockerd}"
PIDFILE="$STATE/dockerd.pid"
DOCKER="${DOCKER:-docker}"

case "${1:-}" in
  start)
    if "$DOCKER" info >/dev/null 2>&1; then echo "dockerd: already running"; exit 0; fi
    command -v dockerd >/dev/null || { echo "dockerd missing: apt-get install -y docker.io" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "dockerd is not running and starting it needs root" >&2; exit 1; }
    mkdir -p "$STATE"
    dockerd --bridge=none --iptables=false --ip6tables=false --pidfile "$STATE/dockerd.own.pid" \
      >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 60); do
      if "$DOCKER" info >/dev/null 2>&1; then echo "dockerd: started (pid $(cat "$PIDFILE"))"; exit 0; fi
      sleep 1
    done
    echo "dockerd did not come up in 60 s; log: $STATE/dockerd.log" >&2
    exit 1
    ;;
  stop)
    [ -f "$PIDFILE" ] || { echo "dockerd: not started by this script, left alone"; exit 0; }
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$PIDFILE"
    echo "dockerd: stopped (pid $pid)"
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
