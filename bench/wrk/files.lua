-- wrk script: POSTs pre-made bodies (BENCH_DIR/0 .. BENCH_DIR/<BENCH_FILES-1>), in turn,
-- with BENCH_HEADERS ("Name: value" pairs separated by "|"). Used for gzip batches,
-- which Lua cannot compress itself. Reports like events.lua.
local dir = os.getenv("BENCH_DIR")
local count = tonumber(os.getenv("BENCH_FILES"))
local bodies = {}
for i = 0, count - 1 do
  local f = assert(io.open(dir .. "/" .. i, "rb"))
  bodies[i + 1] = f:read("*a")
  f:close()
end
local next = 1
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v1/events/batch"
for pair in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^|]+") do
  local name, value = pair:match("^%s*(.-):%s*(.-)%s*$")
  wrk.headers[name] = value
end

request = function()
  local body = bodies[next]
  next = next % count + 1
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
