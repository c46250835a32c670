# shellcheck shell=bash
# Helpers shared by the wrk benchmarks (scripts/bench-balancer, scripts/bench-node): a free
# port, a process's CPU time, and wrk's latency figures in milliseconds.

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

# A wrk latency like "812.00us", "1.23ms" or "1.05s" → milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v }
    else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
    else print v }'
}
