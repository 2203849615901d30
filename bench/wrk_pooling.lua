-- wrk script for bench/embeddings_backends.py: one POST per request, JSON lines of the result.
--
--   WRK_PATH=/v1/embeddings WRK_MODEL=all-MiniLM-L6-v2 wrk -t1 -c64 -d10s -s bench/wrk_pooling.lua URL
--   WRK_PATH=/v1/rerank WRK_MODEL=tiny-reranker WRK_DOCUMENTS=8 wrk ... (a query and 8 documents)
--
-- Embeddings: one short sentence per request (10 to 14 MiniLM tokens, bench/workload.py's shape),
-- a different one each time. The done() hook prints one JSON object: requests/s, latency percentiles
-- in ms, and the non-2xx and socket errors, which the bench script refuses to count as throughput.

local path = os.getenv("WRK_PATH") or "/v1/embeddings"
local model = os.getenv("WRK_MODEL") or "all-MiniLM-L6-v2"
local documents = tonumber(os.getenv("WRK_DOCUMENTS") or "8")

local subjects = {"The cat", "A small dog", "My neighbour", "The old train", "A red bird", "The teacher",
  "Our team", "The river", "A tired child", "The new phone", "The market", "A quiet city", "The last bus",
  "A bright star", "The baker", "An open window"}
local verbs = {"sits near", "looks at", "waits for", "runs past", "talks about", "sleeps under", "finds",
  "remembers"}
local objects = {"the warm mat", "a blue door", "the busy station", "an empty park", "the tall tree",
  "a long letter"}

local function sentence(i)
  local s = subjects[i % 16 + 1]
  local v = verbs[math.floor(i / 16) % 8 + 1]
  local o = objects[(math.floor(i / 128) + i) % 6 + 1]
  return string.format("%s %s %s on day %d.", s, v, o, i % 256)
end

local counter = 0
local headers = {["Content-Type"] = "application/json"}

function request()
  counter = counter + 1
  local body
  if path == "/v1/rerank" then
    local docs = {}
    for j = 1, documents do
      docs[j] = '"' .. sentence(counter * documents + j) .. '"'
    end
    body = string.format('{"model":"%s","query":"%s","documents":[%s]}', model, sentence(counter),
      table.concat(docs, ","))
  else
    body = string.format('{"model":"%s","input":"%s"}', model, sentence(counter))
  end
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"requests_per_s":%.2f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,' ..
    '"mean_ms":%.3f,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, seconds, summary.requests / seconds, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.mean / 1e3, e.status,
    e.connect + e.read + e.write + e.timeout))
end
