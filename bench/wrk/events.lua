-- wrk script: POSTs payment events with a fresh event_id each, or pre-made bodies.
-- Environment: BENCH_KEY (API key; "none" sends no header), BENCH_PATH,
-- BENCH_EVENTS (events per request, 1 = single-event route body),
-- BENCH_FORMAT (json | ndjson), BENCH_SEED.
-- Pre-made bodies (gzip batches, which Lua cannot compress): BENCH_DIR/0 ..
-- BENCH_DIR/<BENCH_FILES-1>, sent in turn, with BENCH_HEADERS ("Name: value"
-- pairs separated by "|") instead of the key and content type.
local key = os.getenv("BENCH_KEY") or "none"
local path = os.getenv("BENCH_PATH") or "/v1/events/payment_exhaust"
local n = tonumber(os.getenv("BENCH_EVENTS") or "1")
local format = os.getenv("BENCH_FORMAT") or "json"
local dir = os.getenv("BENCH_DIR")
math.randomseed(os.time() * 1000 + (tonumber(os.getenv("BENCH_SEED") or "0")))
local prefix = string.format("%08x", math.random(0, 0x7fffffff))
local counter = 0

local function event()
  counter = counter + 1
  return string.format(
    '{"event_type":"payment_failed","event_timestamp":"2026-11-22T08:00:00Z","event_id":"%s-%04x-4%03x-a%03x-%04x%08x",' ..
    '"merchant_id_hash":"m_4f2a","payment_intent_id_hash":"pi_9c1d","processor":"stripe","failure_category":"card_declined",' ..
    '"retry_count":0,"geo_bucket":"EU","amount_bucket":"100-500","system_source":"checkout-api","payment_method_bucket":"card",' ..
    '"channel":"web","retry_result":"none","failure_origin":"issuer"}',
    prefix, math.random(0, 0xffff), math.random(0, 0xfff), math.random(0, 0xfff), math.random(0, 0xffff), counter)
end

wrk.method = "POST"
wrk.path = path

local bodies = nil
local nextBody = 1
if dir then
  bodies = {}
  for i = 0, tonumber(os.getenv("BENCH_FILES")) - 1 do
    local f = assert(io.open(dir .. "/" .. i, "rb"))
    bodies[i + 1] = f:read("*a")
    f:close()
  end
  for pair in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^|]+") do
    local name, value = pair:match("^%s*(.-):%s*(.-)%s*$")
    wrk.headers[name] = value
  end
else
  if key ~= "none" then wrk.headers["Authorization"] = "Bearer " .. key end
  wrk.headers["Content-Type"] = (format == "ndjson") and "application/x-ndjson" or "application/json"
end

request = function()
  local body
  if bodies then
    body = bodies[nextBody]
    nextBody = nextBody % #bodies + 1
  elseif n == 1 and path ~= "/v1/events/batch" then
    body = event()
  else
    local parts = {}
    for i = 1, n do parts[i] = event() end
    if format == "ndjson" then body = table.concat(parts, "\n") .. "\n"
    else body = "[" .. table.concat(parts, ",") .. "]" end
  end
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
