# shellcheck shell=bash
# Helpers the benchmark scripts share: a free port, a process's CPU time, waiting for a log
# line, finding a node's process under `petmesh-dev cluster`, and wrk's latencies in
# milliseconds.
#
# Sourced by scripts/bench-balancer, scripts/bench-node, scripts/bench-realtime,
# scripts/bench-redis and scripts/bench-scale.

# Prints a TCP port on 127.0.0.1 that is free right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pid → CPU clock ticks (utime + stime, fields 14 and 15 of /proc/<pid>/stat, all threads) of
# the process and its direct children, summed: nginx's or Node's cluster workers count with
# their master. The command name (field 2) may contain spaces, so fields are counted after
# its closing parenthesis. Divide by `getconf CLK_TCK` for seconds.
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    if [[ -r "/proc/$pid/stat" ]]; then
      total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}

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

# A wrk latency like "812.00us", "1.23ms" or "1.05s" → milliseconds.
wrk_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v }
    else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
    else print v }'
}
