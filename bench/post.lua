-- wrk script: POST a JSON body per request, each for another address, and print one JSON line of results.
-- Arguments: kind (login | verify | bare), the account to start at, the first account and the number of accounts
-- to cycle through, number of wrk threads (each thread takes every stride-th account, so no two requests share
-- one).
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  kind = args[1]
  start = tonumber(args[2])
  first = tonumber(args[3])
  accounts = tonumber(args[4])
  stride = tonumber(args[5])
  n = id
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local account = first + (start - first + n) % accounts
  n = n + stride
  local body
  if kind == "verify" then
    body = '{"email": "bench' .. account .. '@example.com", "code": "123456"}'
  else
    body = '{"email": "bench' .. account .. '@example.com"}'
  end
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
