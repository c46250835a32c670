# shellcheck shell=bash
# Installs the system packages the harness runs as real processes (PostgreSQL, Redis, and
# redis-cli for a Redis Cluster).
#
# Sourced by scripts/test, scripts/test-redis-cluster and scripts/cluster. Installs only what is missing, and only
# through apt-get (Debian/Ubuntu, as in CI); anywhere else it says what to install.

# Runs apt-get as root, directly or through non-interactive sudo.
_deps_apt_get() {
  if [[ ${EUID} -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get "$@"
  else
    return 1
  fi
}

# Prints the Debian packages whose programs are missing, one per line.
_deps_missing() {
  command -v redis-server >/dev/null 2>&1 || echo redis-server
  # redis-cli creates the Redis Cluster of the cluster-mode tests (`--cluster create`).
  command -v redis-cli >/dev/null 2>&1 || echo redis-tools
  # The server binaries are not on PATH on Debian; the harness looks for them here.
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || echo postgresql
}

# Installs redis-server, redis-tools and postgresql if their programs are missing.
ensure_packages() {
  local missing
  mapfile -t missing < <(_deps_missing)
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  echo "deps: missing packages: ${missing[*]}" >&2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: no apt-get here; install ${missing[*]} yourself (PostgreSQL server binaries, redis-server and redis-cli)" >&2
    return 1
  fi
  echo "deps: apt-get update" >&2
  if ! _deps_apt_get update -qq; then
    echo "deps: cannot run apt-get as root (not root, no passwordless sudo); install ${missing[*]} yourself" >&2
    return 1
  fi
  echo "deps: apt-get install ${missing[*]}" >&2
  if ! _deps_apt_get install -y -qq --no-install-recommends "${missing[@]}"; then
    echo "deps: installing ${missing[*]} failed" >&2
    return 1
  fi
  mapfile -t missing < <(_deps_missing)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "deps: still missing after install: ${missing[*]}" >&2
    return 1
  fi
}
