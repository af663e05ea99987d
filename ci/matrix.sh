#!/usr/bin/env bash
# Run the test matrix: for each backend, install its extra, then run the contract suite against its
# pools plus its own tests. The pytest fixtures start each engine on 127.0.0.1 in its own process
# group and end it by that group's id.
#
#   bash ci/matrix.sh all            # every leg: local dask ray ipython zmq gearman slurm multihost docs
#   bash ci/matrix.sh dask ray       # some of them
#   bash ci/matrix.sh --full multihost   # with the longest partition scenarios too
#
# The docs leg builds the documentation site (Sphinx, warnings as errors) and runs its examples.
# The multihost leg runs every cluster type across simulated hosts (Linux namespaces on a bridge,
# tests/multihost.py): it needs root, and skips with the reason elsewhere. So does the slurm leg, which
# runs a real SLURM (Debian's slurmctld, slurmd, munge) on those simulated hosts (tests/slurm_lab.py).
#
# Set GLIMPSE_CI_NO_INSTALL=1 to skip the pip installs (an environment that has them already).
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_BACKENDS=(local dask ray ipython zmq gearman slurm multihost docs)
FULL=()
if [ "${1:-}" = --full ]; then FULL=(--full); shift; fi
backends=("$@")
if [ ${#backends[@]} -eq 0 ] || [ "${backends[0]}" = all ]; then
  backends=("${ALL_BACKENDS[@]}")
fi

PYTHON=${PYTHON:-python3}
# The suites every pool kind runs: the iteration contract, and the faces (multiprocessing's,
# concurrent.futures', asyncio's, joblib's), with CPython's own tests of those APIs.
CONTRACT_TESTS=(tests/test_contract.py tests/test_compat.py tests/test_faces.py tests/test_cpython_pool.py
  tests/test_cpython_futures.py tests/test_joblib.py tests/test_journal.py tests/test_long_runs.py
  tests/test_initializer.py)

install() {
  local extras=$1
  [ "${GLIMPSE_CI_NO_INSTALL:-0}" = 1 ] && return 0
  "$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
}

# gearmand, the gearman job server, comes from the Debian package gearman-job-server (in /usr/sbin).
ensure_gearmand() {
  if command -v gearmand >/dev/null || [ -x /usr/sbin/gearmand ]; then return 0; fi
  [ "${GLIMPSE_CI_NO_INSTALL:-0}" = 1 ] && { echo "gearmand is not installed" >&2; return 1; }
  if ! command -v apt-get >/dev/null; then
    echo "gearmand is not installed and apt-get is not available: install the gearmand package of this system" >&2
    return 1
  fi
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "installing gearman-job-server with apt-get (gearmand)"
  "${sudo[@]}" apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends gearman-job-server
}

# SLURM's daemons and commands, and munge, come from Debian's packages.
ensure_slurm() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; then return 0; fi
  [ "${GLIMPSE_CI_NO_INSTALL:-0}" = 1 ] && return 0  # the tests skip, saying what to install
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0
  echo "installing slurmctld slurmd slurm-client munge with apt-get"
  apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
}

# The multihost leg's hosts are namespaces made with ip (iproute2), unshare and nsenter (util-linux).
ensure_namespace_tools() {
  if command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null; then return 0; fi
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0  # the tests skip, saying why
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 util-linux
}

run_backend() {
  local backend=$1
  case "$backend" in
    local)
      install "test,joblib" || return 1
      local ignored=()
      for engine in "${ALL_BACKENDS[@]:1}"; do ignored+=("--ignore-glob=tests/test_${engine}_*.py"); done
      "$PYTHON" -m pytest --pools local "${ignored[@]}" "${FULL[@]}" tests ;;
    slurm)
      install "test,joblib,slurm" || return 1
      ensure_slurm || return 1
      ensure_namespace_tools || return 1
      # The lab's own checks start a lab of their own: one process holds one lab at a time.
      local slurm_tests=()
      for file in tests/test_slurm_*.py; do
        case "$file" in tests/test_slurm_lab.py | tests/test_slurm_docs.py) ;; *) slurm_tests+=("$file") ;; esac
      done
      # docs/slurm.md's example first, while the nodes' cores are free for its two-core jobs.
      "$PYTHON" -m pytest "${FULL[@]}" tests/test_slurm_lab.py && \
        "$PYTHON" -m pytest --pools slurm "${FULL[@]}" tests/test_slurm_docs.py "${CONTRACT_TESTS[@]}" "${slurm_tests[@]}" ;;
    dask|ray|ipython|zmq|gearman)
      install "test,joblib,${backend}" || return 1
      if [ "$backend" = gearman ]; then ensure_gearmand || return 1; fi
      "$PYTHON" -m pytest --pools "$backend" "${FULL[@]}" "${CONTRACT_TESTS[@]}" tests/test_"${backend}"_*.py ;;
    multihost)
      install "test,all" || return 1
      ensure_gearmand || return 1
      ensure_namespace_tools || return 1
      "$PYTHON" -m pytest --pools local "${FULL[@]}" tests/test_multihost_*.py ;;
    docs)
      # The documentation site, warnings as errors, and every example of the README and docs run as scripts.
      install "test,all,docs" || return 1
      local site
      site=$(mktemp -d) && "$PYTHON" -m sphinx -W --keep-going -q -b html docs "$site" && rm -rf "$site" && \
        "$PYTHON" -m pytest tests/test_docs_*.py ;;
    *)
      echo "ci/matrix.sh: unknown backend '$backend' (known: ${ALL_BACKENDS[*]})" >&2
      return 2 ;;
  esac
}

failed=()
for backend in "${backends[@]}"; do
  echo "=== backend: $backend ==="
  started=$SECONDS
  if run_backend "$backend"; then
    echo "=== backend: $backend passed in $((SECONDS - started))s ==="
  else
    echo "=== backend: $backend FAILED after $((SECONDS - started))s ==="
    failed+=("$backend")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed backends: ${failed[*]}" >&2
  exit 1
fi
echo "all backends passed: ${backends[*]}"
