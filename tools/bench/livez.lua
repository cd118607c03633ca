-- wrk script: GET /livez (a trivial cpp-httplib route on the same server) for the comparison
-- with consume: same server, same threads, same connections.
--   wrk -t2 -c64 -d20s -s tools/bench/livez.lua http://127.0.0.1:8084
function done(summary, latency, requests)
  io.write(string.format("livez: %d requests, %.0f req/s, non-2xx/3xx %d\n", summary.requests,
                         summary.requests / (summary.duration / 1e6), summary.errors.status))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("  latency p%s %.2f ms\n", p, latency:percentile(p) / 1000))
  end
end
