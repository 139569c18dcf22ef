#!/usr/bin/env bash
# Starts or stops a compose cluster of Flotilla nodes (`make up`, `make down`).
#
#   deploy/compose/cluster.sh up [three|six]   start it; wait until every container's
#                                              health check passes (HEALTH_TIMEOUT_S, 120)
#   deploy/compose/cluster.sh down [WIPE]      stop and remove the containers of both
#                                              clusters; WIPE=1 removes their volumes too
#
# The image is flotilla:latest (`make image`), or FLOTILLA_IMAGE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
timeout_s=${HEALTH_TIMEOUT_S:-120}

if command -v docker-compose >/dev/null; then
  compose() { docker-compose "$@"; }
else
  compose() { docker compose "$@"; }
fi

file_of() {
  case $1 in
    three) echo "$here/three-nodes.yml" ;;
    six) echo "$here/six-nodes-three-zones.yml" ;;
    *) echo "cluster.sh: CLUSTER must be three or six, not '$1'" >&2; exit 2 ;;
  esac
}

up() {
  local cluster=$1 file
  file=$(file_of "$cluster")
  local image=${FLOTILLA_IMAGE:-flotilla:latest}
  docker image inspect "$image" >/dev/null 2>&1 || {
    echo "cluster.sh: no image $image; build it with 'make image'" >&2
    exit 1
  }
  compose -p "flotilla-$cluster" -f "$file" up -d
  local containers
  containers=$(compose -p "flotilla-$cluster" -f "$file" ps -q)
  echo "waiting for the health checks (up to ${timeout_s}s)..."
  local deadline=$((SECONDS + timeout_s))
  while :; do
    local waiting=0 line
    for c in $containers; do
      line=$(docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.ExitCode}}{{end}}' "$c")
      case $line in
        *" running healthy") ;;
        # The one-shot service that makes the certificates, done.
        *certs*" exited 0") ;;
        *" running "*) waiting=$((waiting + 1)) ;;
        *)
          echo "cluster.sh: ${line# } (not running); its log:" >&2
          docker logs --tail 20 "$c" >&2 || true
          exit 1
          ;;
      esac
    done
    [ "$waiting" = 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "cluster.sh: $waiting container(s) not healthy after ${timeout_s}s:" >&2
      docker ps --filter "label=com.docker.compose.project=flotilla-$cluster" >&2
      exit 1
    fi
    sleep 2
  done
  docker ps --filter "label=com.docker.compose.project=flotilla-$cluster" \
    --format 'table {{.Names}}\t{{.Status}}'
  echo "Ready. Try: flotilla cluster describe   (make down to stop)"
}

down() {
  local wipe=${1:-}
  for cluster in three six; do
    local file label="label=com.docker.compose.project=flotilla-$cluster"
    file=$(file_of "$cluster")
    # Nothing of this cluster's: nothing to say about it.
    if [ -z "$(docker ps -aq --filter "$label")$(docker volume ls -q --filter "$label")" ]; then
      continue
    fi
    if [ "$wipe" = 1 ]; then
      compose -p "flotilla-$cluster" -f "$file" down --remove-orphans --volumes
    else
      compose -p "flotilla-$cluster" -f "$file" down --remove-orphans
    fi
  done
}

case ${1:-} in
  up) up "${2:-three}" ;;
  down) down "${2:-}" ;;
  *) echo "usage: deploy/compose/cluster.sh up [three|six] | down [1]" >&2; exit 2 ;;
esac
