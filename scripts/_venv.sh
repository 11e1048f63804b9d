# Shared by scripts/serve and scripts/test: make .venv with a Python >= 3.11 and install nanogen
# with the pinned versions in requirements.lock. Optional arguments after the extras are installed
# first, on their own (scripts/test: the CPU build of torch, before the diffusers extra asks for torch).
ensure_venv() {
  local extras="$1"
  shift
  local python="${PYTHON:-}"
  if [ -z "$python" ]; then
    for candidate in python3.11 python3.12 python3; do
      if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        python="$candidate"; break
      fi
    done
  fi
  [ -n "$python" ] || { echo "nanogen needs Python >= 3.11" >&2; exit 1; }
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  if [ "$#" -gt 0 ] && ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" \
    >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "installing $* failed (log above)" >&2
    exit 1
  fi
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".${extras}" \
    >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "installing nanogen failed (log above)" >&2
    exit 1
  fi
}
