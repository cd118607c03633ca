-- wrk script: POST /api/v1/usage/events with 1000-item bodies (fresh idempotency keys, 100 users).
--   wrk -t2 -c4 -d20s -s tools/bench/events.lua http://127.0.0.1:8084 -- <service-token> [items] [users]
-- Prints events/s = accepted items per second.
local thread_count = 0
local threads = {}

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  token = args[1] or "bench-token"
  items = tonumber(args[2] or "1000")
  users = tonumber(args[3] or "100")
  prefix = string.format("ev-%d-%d-%d-", os.time(), math.random(1, 1000000000), thread_index)
  counter = 0
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
end

function request()
  local parts = {}
  for i = 1, items do
    counter = counter + 1
    parts[i] = '{"user_id":"bench-batch-' .. (counter % users) ..
               '","service":"chat","quantity":1,"idempotency_key":"' .. prefix .. counter ..
               '","metadata":{"model":"bench"}}'
  end
  return wrk.format("POST", "/api/v1/usage/events", headers,
                    '{"events":[' .. table.concat(parts, ",") .. ']}')
end

function done(summary, latency, requests)
  -- done() runs in the main Lua state: read the item count back from a thread.
  local items = tonumber(threads[1]:get("items"))
  local seconds = summary.duration / 1e6
  io.write(string.format("events: %d requests of %d items, %.0f req/s = %.0f events/s, " ..
                         "non-2xx/3xx %d\n", summary.requests, items, summary.requests / seconds,
                         summary.requests * items / seconds, summary.errors.status))
  for _, p in ipairs({50, 99}) do
    io.write(string.format("  latency p%s %.2f ms\n", p, latency:percentile(p) / 1000))
  end
end
