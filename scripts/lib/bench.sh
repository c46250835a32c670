# shellcheck shell=bash
# Helpers the benchmark scripts share: waiting for a log line, finding a node's process under
# `petmesh-dev cluster`, and reading wrk's latencies.
#
# Sourced by scripts/bench-realtime, scripts/bench-redis, scripts/bench-scale and
# scripts/bench-balancer.

# file pattern seconds pid → waits until a line of file matches pattern, while pid lives;
# exits the script with the file's last lines otherwise.
wait_for_line() {
  local deadline=$((SECONDS + $3))
  until grep -qE "$2" "$1" 2>/dev/null; do
    if ! kill -0 "$4" 2>/dev/null || ((SECONDS > deadline)); then
      echo "no '$2' in $1 within $3 s:" >&2
      tail -n 20 "$1" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# cluster-pid node-id → pid of that petmesh-node process (a child of `petmesh-dev cluster`).
node_pid() {
  local pid
  for pid in $(pgrep -P "$1" -x petmesh-node); do
    if tr '\0' '\n' <"/proc/$pid/environ" | grep -qx "PETMESH_NODE__NODE_ID=$2"; then
      echo "$pid"
      return 0
    fi
  done
  echo "no process for $2" >&2
  return 1
}

# wrk latency like "1.23ms" → milliseconds.
wrk_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
    else print v }'
}
