-- wrk script: POST /api/v1/usage/consume with a fresh idempotency key per request.
--   wrk -t2 -c64 -d20s -s tools/bench/consume.lua http://127.0.0.1:8084 -- <service-token> <user_id> [service]
-- Every request is a new unit of usage (nothing is answered from an idempotency record), so the
-- user must be on an unlimited (Enterprise) or high-limit plan for the 200s to last.
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  token = args[1] or "bench-token"
  user_id = args[2] or "bench-user"
  service = args[3] or "chat"
  -- Unique across threads and across runs against the same store.
  prefix = string.format("wrk-%d-%d-%d-", os.time(), math.random(1, 1000000000), thread_index)
  counter = 0
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  statuses = {}
end

function request()
  counter = counter + 1
  local body = '{"user_id":"' .. user_id .. '","service":"' .. service ..
               '","quantity":1,"idempotency_key":"' .. prefix .. counter .. '"}'
  return wrk.format("POST", "/api/v1/usage/consume", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("consume: %d requests, %.0f req/s, non-2xx/3xx %d, socket errors %d\n",
                         summary.requests, summary.requests / (summary.duration / 1e6),
                         summary.errors.status,
                         summary.errors.connect + summary.errors.read + summary.errors.write +
                           summary.errors.timeout))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("  latency p%s %.2f ms\n", p, latency:percentile(p) / 1000))
  end
end
