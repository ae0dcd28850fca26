-- wrk script for the end-to-end section: GET /?user=u<n>[&plan=premium], n cycling over 100,000
-- users (every tenth one premium), each wrk thread starting at its own offset. `done` prints one
-- JSON line (prefixed "JSON ") that benchmarks/e2e.py parses.

local threads = 0

function setup(thread)
  thread:set("offset", threads * 50021)
  threads = threads + 1
end

counter = 0

function request()
  counter = counter + 1
  local n = ((offset or 0) + counter) % 100000
  local path = "/?user=u" .. n
  if n % 10 == 0 then
    path = path .. "&plan=premium"
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "non2xx": %d, ' ..
    '"latency_p50_us": %d, "latency_p99_us": %d, "latency_mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
