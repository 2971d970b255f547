# Sourced by test.sh and bench.sh: creates .venv if missing, installs requirements.txt (the project's pinned
# versions) and builds segops into it, editable, against the torch that will run it (no build isolation).
# The build's own decisions (CPU/CUDA, architectures, emulation) are printed; its full log is build/pip-install.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
source .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements.txt
mkdir -p build
echo "building segops (log: build/pip-install.log) ..."
if ! python -m pip install --no-build-isolation --no-deps -v -e . > build/pip-install.log 2>&1; then
  tail -n 80 build/pip-install.log
  echo "segops: the build failed; the whole log is build/pip-install.log" >&2
  exit 1
fi
grep "segops setup:" build/pip-install.log || true
