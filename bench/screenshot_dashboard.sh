#!/usr/bin/env bash
# Screenshots of rq-dashboard for the README: docs/rq-dashboard-queues.png, docs/rq-dashboard-workers.png.
#   bench/screenshot_dashboard.sh      starts a small private stack (Redis, two workers, the API,
#                                      rq-dashboard on free ports), loads it, shoots, stops it
#   API_URL=http://127.0.0.1:8000 DASHBOARD_URL=http://127.0.0.1:9181 bench/screenshot_dashboard.sh
#                                      uses a running bin/up instead
# The pictures are taken while more chat requests run than the chat worker has slots, so the
# queues page shows queued jobs and the workers page busy slots. The private stack gives each model
# few slots (rq workers) so that the workers page fits the picture.
# Needs a headless chromium (Debian: apt-get install chromium); CHROMIUM=/path overrides.
source "$(dirname "$0")/../bin/_common.sh"
ensure_venv
ensure_models
cd "$REPO"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[ -n "$chromium" ] || { echo "screenshot_dashboard: no chromium on PATH (apt-get install chromium)" >&2; exit 1; }
out_dir="${OUT_DIR:-$REPO/docs}"
mkdir -p "$out_dir"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

if [ -z "${API_URL:-}" ]; then
  streams="${LOAD_STREAMS:-6}"  # the chat model has 4 slots here
  export MODELYARD_MODELS_FILE="$work/models.yaml"
  cat >"$MODELYARD_MODELS_FILE" <<YAML
models:
  - {name: tiny-chat, kind: chat, source: "$REPO/models/tiny-chat", context_length: 2048, max_batch_size: 4}
  - {name: all-MiniLM-L6-v2, kind: embedding, source: "$REPO/models/all-MiniLM-L6-v2", max_batch_size: 2}
  - {name: tiny-reranker, kind: rerank, source: "$REPO/models/tiny-reranker", max_batch_size: 2}
YAML
  redis_port=$(free_port)
  "$(redis_server_bin)" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
  pids+=($!)
  export MODELYARD_REDIS_URL="redis://127.0.0.1:$redis_port/0"
  bin/worker tiny-chat >"$work/worker-chat.log" 2>&1 &
  pids+=($!)
  bin/worker all-MiniLM-L6-v2 tiny-reranker >"$work/worker-pooling.log" 2>&1 &
  pids+=($!)
  api_port=$(free_port)
  MODELYARD_PORT="$api_port" bin/api >"$work/api.log" 2>&1 &
  pids+=($!)
  API_URL="http://127.0.0.1:$api_port"
  dashboard_port=$(free_port)
  bin/dashboard --json --bind 127.0.0.1 --port "$dashboard_port" \
    --redis-url "$MODELYARD_REDIS_URL" >"$work/dashboard.log" 2>&1 &
  pids+=($!)
  DASHBOARD_URL="http://127.0.0.1:$dashboard_port"
fi
DASHBOARD_URL="${DASHBOARD_URL:-http://127.0.0.1:9181}"
streams="${streams:-${LOAD_STREAMS:-12}}"  # bin/up's chat model has 8 slots

# Wait for every model to have a worker and for the dashboard, send a few requests of each kind,
# then keep more long chat requests going than the chat worker has slots (while we shoot).
"$PY" - "$API_URL" "$DASHBOARD_URL" "$work/load.pid" "$streams" <<'PY' &
import json, os, sys, threading, time, urllib.request

api, dashboard, pid_file, streams = sys.argv[1:]

def call(path, body, timeout=120):
    request = urllib.request.Request(api + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()

deadline = time.time() + 300
while True:
    try:
        health = json.load(urllib.request.urlopen(api + "/health", timeout=2))
        urllib.request.urlopen(dashboard + "/0/data/queues.json", timeout=2)
        if health["models"] and all(health["models"].values()):
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("screenshot_dashboard: the stack did not come up")
    time.sleep(0.5)
for i in range(3):
    call("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": [f"sentence {i}", "another one"]})
    call("/v1/rerank", {"model": "tiny-reranker", "query": "what is redis", "documents": ["Redis is a store", "Paris"]})
    call("/v1/chat/completions", {"model": "tiny-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
with open(pid_file + ".ready", "w"):
    pass
prompt = [{"role": "user", "content": "Write a long story."}]

def keep_busy():  # until the shell, done shooting, ends this process
    while True:
        call("/v1/chat/completions", {"model": "tiny-chat", "messages": prompt, "max_tokens": 1500, "temperature": 0})

threads = [threading.Thread(target=keep_busy, daemon=True) for _ in range(int(streams))]
for thread in threads:
    thread.start()
    time.sleep(0.05)
for thread in threads:
    thread.join()
PY
load=$!
pids+=("$load")
for _ in $(seq 600); do
  [ -f "$work/load.pid.ready" ] && break
  kill -0 "$load" 2>/dev/null || { echo "screenshot_dashboard: the load script failed" >&2; exit 1; }
  sleep 0.5
done
sleep 3  # let the long streams start and fill the chat worker's slots

shoot() {
  local url="$1" out="$2"
  "$chromium" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$(mktemp -d -p "$work")" --virtual-time-budget=10000 \
    --window-size=1400,900 --screenshot="$out" "$url" >"$work/chromium.log" 2>&1 \
    || { cat "$work/chromium.log" >&2; exit 1; }
  echo "screenshot_dashboard: wrote $out" >&2
}
shoot "$DASHBOARD_URL/0/view/queues" "$out_dir/rq-dashboard-queues.png"
shoot "$DASHBOARD_URL/0/view/workers" "$out_dir/rq-dashboard-workers.png"
