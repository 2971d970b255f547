# Sourced by test.sh and bench.sh: creates .venv if missing, installs requirements.txt (the project's pinned
# versions) and builds segops into it, editable, against the torch that will run it (no build isolation).
# The build is skipped when .venv already holds one made from the same sources with every part the caller asks for
# (tools/build_stamp.py: FORCE_CUDA=1 asks for the CUDA kernels, SEGOPS_BUILD_EMULATION=1 for the kernel
# emulation); SEGOPS_REBUILD=1 builds anyway.
# The build's own decisions (CPU/CUDA, architectures, emulation) are printed; its full log is build/pip-install.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
  rm -f build/segops-build.json  # a new environment holds no build
fi
source .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements.txt
mkdir -p build
needed_parts=()
[ "${FORCE_CUDA:-}" = "1" ] && needed_parts+=(--cuda)
[ "${SEGOPS_BUILD_EMULATION:-}" = "1" ] && needed_parts+=(--emulation)
if [ "${SEGOPS_REBUILD:-}" = "1" ] || ! python tools/build_stamp.py check "${needed_parts[@]}"; then
  # torch's build wraps the compilers in the ccache on PATH (requirements.txt installs it): a rebuild after a small
  # change recompiles only what changed; CCACHE_BASEDIR lets clones in other folders share the cache.
  # The build runs in a fresh temporary folder each time: its name must not enter the cache key (CCACHE_NOHASHDIR).
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR=1
  echo "building segops (log: build/pip-install.log) ..."
  if ! python -m pip install --no-build-isolation --no-deps -v -e . > build/pip-install.log 2>&1; then
    tail -n 80 build/pip-install.log
    echo "segops: the build failed; the whole log is build/pip-install.log" >&2
    exit 1
  fi
  grep "segops setup:" build/pip-install.log || true
  python tools/build_stamp.py write
fi
