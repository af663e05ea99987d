#!/usr/bin/env bash
# Run the test matrix: for each backend, install its extra, then run the contract suite against its
# pools plus its own tests. The pytest fixtures start each engine on 127.0.0.1 in its own process
# group and end it by that group's id.
#
#   bash ci/matrix.sh all            # every backend: local dask ray ipython zmq
#   bash ci/matrix.sh dask ray       # some of them
#
# Set GLIMPSE_CI_NO_INSTALL=1 to skip the pip installs (an environment that has them already).
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_BACKENDS=(local dask ray ipython zmq)
backends=("$@")
if [ ${#backends[@]} -eq 0 ] || [ "${backends[0]}" = all ]; then
  backends=("${ALL_BACKENDS[@]}")
fi

PYTHON=${PYTHON:-python3}

install() {
  local extras=$1
  [ "${GLIMPSE_CI_NO_INSTALL:-0}" = 1 ] && return 0
  "$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
}

run_backend() {
  local backend=$1
  case "$backend" in
    local)
      install test || return 1
      local ignored=()
      for engine in "${ALL_BACKENDS[@]:1}"; do ignored+=("--ignore-glob=tests/test_${engine}_*.py"); done
      "$PYTHON" -m pytest --pools local "${ignored[@]}" tests ;;
    dask|ray|ipython|zmq)
      install "test,${backend}" || return 1
      "$PYTHON" -m pytest --pools "$backend" tests/test_contract.py tests/test_compat.py tests/test_"${backend}"_*.py ;;
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
