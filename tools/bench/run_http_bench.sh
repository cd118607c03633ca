#!/usr/bin/env bash
# The HTTP benchmark of issue 4 item 6, load generator and daemon on the same machine:
#   1. starts ledgerd (Release build) on a fresh data directory, Kafka `none` or `embedded`;
#   2. puts the user `bench-user` on the Enterprise plan (unlimited) with a signed Stripe
#      `customer.subscription.updated` delivery to POST /api/v1/billing/webhooks/stripe;
#   3. wrk, 2 threads x C connections: GET /livez (trivial cpp-httplib route, the baseline), then
#      POST /api/v1/usage/consume with a fresh idempotency key per request (durable: each answer
#      comes after the fsync of its group);
#   4. open-loop latency: `ledgerctl bench http` offers consume at a fixed rate (default half the
#      measured consume rate) and reports latency from each request's due time (no coordinated
#      omission);
#   5. batched ingest: wrk POST /api/v1/usage/events with 1000-item bodies (one
#      usage.batch_recorded.v1 per user and request; events/s counts the items);
#   6. prints the figures and stops ledgerd (SIGTERM).
#
# Usage: tools/bench/run_http_bench.sh [--build DIR] [--kafka none|embedded] [--connections C]
#                                      [--seconds S] [--rate R] [--phases LIST] [--keep] [--serve]
# --serve: start and seed only, print the URL and token, and keep serving until interrupted.
# --phases: comma-separated subset of livez,consume,latency,events (default: all four);
#           latency without consume needs --rate (default then 4000).
# Defaults: --build build-release, --kafka none, --connections 64, --seconds 20.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$root/build-release"
kafka="none"
connections=64
seconds=20
rate=""
keep=0
serve=0
phases="livez,consume,latency,events"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --kafka) kafka="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --phases) phases="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --serve) serve=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done
for phase in ${phases//,/ }; do
  case "$phase" in
    livez|consume|latency|events) ;;
    *) echo "unknown phase $phase (livez, consume, latency, events)" >&2; exit 64 ;;
  esac
done
phase() { [[ ",$phases," == *",$1,"* ]]; }
ledgerd="$build/bin/ledgerd"
ledgerctl="$build/bin/ledgerctl"
for tool in "$ledgerd" "$ledgerctl"; do
  [[ -x "$tool" ]] || { echo "missing $tool: cmake --build $build --target ledgerd ledgerctl" >&2; exit 64; }
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 64; }

work="$(mktemp -d /tmp/ledgerd-bench-XXXXXX)"
token="bench-token-$RANDOM$RANDOM"
secret="whsec_bench_$RANDOM$RANDOM"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [[ $keep -eq 0 ]]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

LEDGER_SERVICE_TOKENS="bench=$token" STRIPE_WEBHOOK_SECRET="$secret" \
  "$ledgerd" --data-dir "$work/data" --listen 127.0.0.1:0 --kafka-brokers "$kafka" \
  >"$work/ledgerd.log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 200); do
  port="$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/ledgerd.log" | head -1)"
  [[ -n "$port" ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/ledgerd.log" >&2; exit 70; }
  sleep 0.05
done
[[ -n "$port" ]] || { echo "ledgerd did not start" >&2; cat "$work/ledgerd.log" >&2; exit 70; }
url="http://127.0.0.1:$port"

# Enterprise for bench-user: a signed Stripe delivery, exactly as Stripe would send it.
now="$(date +%s)"
body=$(cat <<JSON
{"id":"evt_bench_1","object":"event","api_version":"2025-03-31.basil","created":$now,"data":{"object":{"id":"sub_bench","object":"subscription","cancel_at_period_end":false,"cancel_at":null,"canceled_at":null,"created":$((now - 86400)),"currency":"usd","customer":"cus_bench","ended_at":null,"items":{"object":"list","data":[{"id":"si_bench","object":"subscription_item","current_period_start":$((now - 86400)),"current_period_end":$((now + 29 * 86400)),"price":{"id":"price_bench_enterprise","object":"price","recurring":{"interval":"month","interval_count":1},"unit_amount":9900},"quantity":1}]},"livemode":false,"metadata":{"user_id":"bench-user","plan_id":"enterprise"},"status":"active","trial_start":null,"trial_end":null}},"livemode":false,"pending_webhooks":1,"request":{"id":null,"idempotency_key":null},"type":"customer.subscription.updated"}
JSON
)
signature="$(printf '%s.%s' "$now" "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)"
status="$(curl -s -o "$work/webhook.out" -w '%{http_code}' -X POST "$url/api/v1/billing/webhooks/stripe" \
  -H "Content-Type: application/json" -H "Stripe-Signature: t=$now,v1=$signature" --data-binary "$body")"
[[ "$status" == 200 ]] || { echo "webhook delivery: HTTP $status $(cat "$work/webhook.out")" >&2; exit 70; }
check="$(curl -s -X POST "$url/api/v1/usage/consume" -H "Authorization: Bearer $token" \
  -H "Content-Type: application/json" \
  --data '{"user_id":"bench-user","service":"bolt-diy","idempotency_key":"bench-check"}')"
[[ "$check" == *'"allowed":true'* ]] || { echo "consume check failed: $check" >&2; exit 70; }

if [[ $serve -eq 1 ]]; then
  echo "serving: url=$url token=$token pid=$pid data=$work/data (Ctrl-C to stop)"
  wait "$pid"
  exit 0
fi

# Waits until the outbox has published everything (lag 0; immediate with --kafka none), so that
# each phase starts from a steady state instead of competing with the previous phase's backlog.
settle() {
  local start lag
  start=$(date +%s.%N)
  for _ in $(seq 1 600); do
    lag="$(curl -s "$url/readyz" | sed -n 's/.*"outbox":{[^}]*"lag":\([0-9]*\).*/\1/p')"
    [[ "$lag" == 0 ]] && break
    sleep 0.2
  done
  echo "(outbox lag ${lag:-?} after $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}') s)"
}

echo "ledgerd $(basename "$build") at $url, kafka=$kafka, $(nproc) cores; wrk -t2 -c$connections -d${seconds}s"
livez_rps="" consume_rps="" events_rate="" p99=""
if phase livez; then
  echo
  wrk -t2 -c"$connections" -d"${seconds}s" -s "$here/livez.lua" "$url/livez" | tee "$work/livez.txt"
  livez_rps="$(sed -n 's/^livez: [0-9]* requests, \([0-9]*\) req\/s.*/\1/p' "$work/livez.txt")"
  settle
fi
if phase consume; then
  echo
  wrk -t2 -c"$connections" -d"${seconds}s" -s "$here/consume.lua" "$url" -- "$token" bench-user chat \
    | tee "$work/consume.txt"
  consume_rps="$(sed -n 's/^consume: [0-9]* requests, \([0-9]*\) req\/s.*/\1/p' "$work/consume.txt")"
  settle
fi
if phase latency; then
  [[ -n "$rate" ]] || rate=$(( ${consume_rps:-8000} / 2 ))
  echo
  "$ledgerctl" bench http --url "$url" --token "$token" --user bench-user --rate "$rate" \
    --connections "$connections" --seconds "$seconds" | tee "$work/latency.txt"
  p99="$(sed -n 's/^  p99 *\([0-9.]*\) ms.*/\1/p' "$work/latency.txt" | head -1)"
  settle
fi
if phase events; then
  echo
  wrk -t2 -c4 -d"${seconds}s" -s "$here/events.lua" "$url" -- "$token" 1000 100 | tee "$work/events.txt"
  events_rate="$(sed -n 's/.* = \([0-9]*\) events\/s.*/\1/p' "$work/events.txt")"
fi

echo
echo "== summary (kafka=$kafka, $connections connections) =="
phase livez && echo "GET /livez               $livez_rps req/s"
if phase consume; then
  share="?"
  [[ -n "$livez_rps" ]] && share="$(awk -v a="$consume_rps" -v b="$livez_rps" 'BEGIN{printf "%.0f", 100*a/b}')"
  echo "POST /usage/consume      $consume_rps req/s (${share}% of /livez; target >= 8000 and >= 80%)"
fi
phase latency && echo "consume p99 at $rate/s   ${p99:-?} ms (target <= 10 ms at half the max rate)"
phase events && echo "POST /usage/events       $events_rate events/s (1000-item bodies; target >= 200000)"
grep -E "^ledger_(groups_committed|events_appended|append_group_commands_(sum|count))" \
  <(curl -s "$url/metrics") || true
