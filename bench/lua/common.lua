-- Shared by the wrk scripts: the API key header and a JSON summary line the harness parses.
-- Environment: BENCH_TOKEN (API key, optional: the ceiling ignores it).

local M = {}

function M.headers()
  local token = os.getenv("BENCH_TOKEN")
  if token and #token > 0 then
    wrk.headers["X-Access-Token"] = token
  end
end

function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end

return M
