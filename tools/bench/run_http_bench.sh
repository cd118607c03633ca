#!/usr/bin/env bash
# The HTTP benchmark of issue 4 item 6, load generator and servers on the same machine, all in
# one run so the figures are comparable:
#   1. trivial: a stock cpp-httplib server (`trivial_httpd`, tools/bench/trivial_httpd.cc) whose
#      POST /api/v1/usage/consume answers a constant; wrk with the same script as consume below;
#   2. starts ledgerd (Release build) on a fresh data directory, Kafka `none` or `embedded`, and
#      puts the user `bench-user` on the Enterprise plan (unlimited) with a signed Stripe
#      `customer.subscription.updated` delivery to POST /api/v1/billing/webhooks/stripe;
#   3. livez: wrk GET /livez (a trivial route on ledgerd's own server);
#   4. consume: wrk POST /api/v1/usage/consume with a fresh idempotency key per request (durable:
#      each answer comes after the fsync of its group);
#   5. latency: `ledgerctl bench http` offers consume at a fixed rate and reports latency from each
#      request's due time (no coordinated omission): at --rate (default 4000/s, issue 4's "half
#      of 8,000"), then at half the rate the consume phase measured;
#   6. events: batched ingest, `ledgerctl bench http --batch 1000`: POST /api/v1/usage/events
#      with 1000-item bodies for 100 users (one usage.batch_recorded.v1 per user and request;
#      events/s counts the items the answers accepted), closed loop on --events-connections;
#      events-wrk: the same load from wrk's Lua script (events.lua), whose body building costs
#      the shared two cores ~0.4 of a core at this rate;
#   7. seed: the seed's stack (tools/bench/seed_stack/app.py: FastAPI on uvicorn over a private
#      PostgreSQL 15 cluster, fsync and synchronous_commit on) with the same consume script;
#   8. prints the figures side by side and stops everything.
#
# Usage: tools/bench/run_http_bench.sh [--build DIR] [--kafka none|embedded] [--connections C]
#                                      [--events-connections E] [--seconds S] [--rate R]
#                                      [--phases LIST] [--keep] [--serve]
# Connections: issue 4 asks for 32 or more; the trivial server gets one thread per connection
# (cpp-httplib's model), which is at its fastest around 64 here: at 128 it did 11-17 % less, so a
# consume ÷ trivial ratio at 128 flatters ledgerd (tools/bench/README.md, "128 connections").
# --serve: start and seed ledgerd only, print the URL and token, and keep serving until interrupted.
# --phases: comma-separated subset of trivial,livez,consume,latency,events,events-wrk,seed
#           (default: all);
#           latency without consume runs at --rate only.
# The seed phase needs root (PostgreSQL runs as the `postgres` user) and the Debian packages
# postgresql python3-fastapi python3-uvicorn python3-asyncpg; run as root, it installs the missing
# ones. Defaults: --build build-release, --kafka none, --connections 64, --events-connections 16,
# --seconds 20.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$root/build-release"
kafka="none"
connections=64
events_connections=16
seconds=20
rate=4000
keep=0
serve=0
phases="trivial,livez,consume,latency,events,events-wrk,seed"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --kafka) kafka="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --events-connections) events_connections="$2"; shift 2 ;;
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
    trivial|livez|consume|latency|events|events-wrk|seed) ;;
    *) echo "unknown phase $phase (trivial, livez, consume, latency, events, events-wrk, seed)" >&2
       exit 64 ;;
  esac
done
phase() { [[ ",$phases," == *",$1,"* ]]; }
ledgerd="$build/bin/ledgerd"
ledgerctl="$build/bin/ledgerctl"
trivial_httpd="$build/bin/trivial_httpd"
tools=("$ledgerd" "$ledgerctl")
phase trivial && tools+=("$trivial_httpd")
for tool in "${tools[@]}"; do
  [[ -x "$tool" ]] || {
    echo "missing $tool: cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release" \
      "-DLEDGER_BUILD_TESTS=OFF && cmake --build $build -j2 --target ledgerd ledgerctl" \
      "trivial_httpd" >&2
    exit 64
  }
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 64; }

work="$(mktemp -d /tmp/ledgerd-bench-XXXXXX)"
token="bench-token-$RANDOM$RANDOM"
secret="whsec_bench_$RANDOM$RANDOM"
pid=""
other_pid=""  # trivial_httpd or the seed app, while its phase runs
pg_dir=""     # the seed phase's PostgreSQL cluster (owned by the postgres user)
pg_ctl=""
stop() {  # stop <pid>: SIGTERM and wait
  if [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
stop_pg() {
  if [[ -n "$pg_dir" && -f "$pg_dir/data/postmaster.pid" ]]; then
    runuser -u postgres -- "$pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}
cleanup() {
  stop "$pid"
  stop "$other_pid"
  stop_pg
  if [[ $keep -eq 0 ]]; then
    rm -rf "$work"
    [[ -z "$pg_dir" ]] || rm -rf "$pg_dir"
  else
    echo "kept $work $pg_dir"
  fi
}
trap cleanup EXIT

# wait_listening <log> <pid>: the port from the first "listening on http://host:port" line.
wait_listening() {
  local port=""
  for _ in $(seq 1 400); do
    port="$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$1" | head -1)"
    [[ -n "$port" ]] && break
    kill -0 "$2" 2>/dev/null || { cat "$1" >&2; return 70; }
    sleep 0.05
  done
  [[ -n "$port" ]] || { echo "no listening line in $1" >&2; cat "$1" >&2; return 70; }
  echo "$port"
}

# consume_wrk <url> <label>: the consume script against <url>; sets wrk_rps.
consume_wrk() {
  wrk -t2 -c"$connections" -d"${seconds}s" -s "$here/consume.lua" "$1" -- "$token" bench-user chat \
    | sed "s/^consume:/$2:/" | tee "$work/$2.txt"
  wrk_rps="$(sed -n "s/^$2: [0-9]* requests, \([0-9]*\) req\/s.*/\1/p" "$work/$2.txt")"
}

echo "$(nproc) cores; wrk -t2 -c$connections -d${seconds}s; kafka=$kafka"
trivial_rps=""
if phase trivial && [[ $serve -eq 0 ]]; then
  echo
  echo "== trivial cpp-httplib server (trivial_httpd, $connections threads) =="
  "$trivial_httpd" 0 "$connections" >"$work/trivial.log" 2>&1 &
  other_pid=$!
  tport="$(wait_listening "$work/trivial.log" "$other_pid")"
  consume_wrk "http://127.0.0.1:$tport" trivial
  trivial_rps="$wrk_rps"
  stop "$other_pid"
  other_pid=""
fi

LEDGER_SERVICE_TOKENS="bench=$token" STRIPE_WEBHOOK_SECRET="$secret" \
  "$ledgerd" --data-dir "$work/data" --listen 127.0.0.1:0 --kafka-brokers "$kafka" \
  >"$work/ledgerd.log" 2>&1 &
pid=$!
port="$(wait_listening "$work/ledgerd.log" "$pid")" || { echo "ledgerd did not start" >&2; exit 70; }
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

echo
echo "== ledgerd ($(basename "$build")) at $url, kafka=$kafka =="
livez_rps="" consume_rps="" events_rate="" events_wrk_rate="" p99="" half_rate="" half_p99=""
if phase livez; then
  echo
  wrk -t2 -c"$connections" -d"${seconds}s" -s "$here/livez.lua" "$url/livez" | tee "$work/livez.txt"
  livez_rps="$(sed -n 's/^livez: [0-9]* requests, \([0-9]*\) req\/s.*/\1/p' "$work/livez.txt")"
  settle
fi
if phase consume; then
  echo
  consume_wrk "$url" consume
  consume_rps="$wrk_rps"
  settle
fi
if phase latency; then
  # open_loop <rate> <file>: sets loop_p99.
  open_loop() {
    echo
    "$ledgerctl" bench http --url "$url" --token "$token" --user bench-user --rate "$1" \
      --connections "$connections" --seconds "$seconds" | tee "$work/$2"
    loop_p99="$(sed -n 's/^  p99 *\([0-9.]*\) ms.*/\1/p' "$work/$2" | head -1)"
    settle
  }
  open_loop "$rate" latency.txt
  p99="$loop_p99"
  if [[ -n "$consume_rps" ]]; then
    half_rate=$(( consume_rps / 2 ))
    open_loop "$half_rate" latency-half.txt
    half_p99="$loop_p99"
  fi
fi
if phase events; then
  echo
  "$ledgerctl" bench http --url "$url" --token "$token" --user bench-batch --batch 1000 \
    --batch-users 100 --connections "$events_connections" --seconds "$seconds" | tee "$work/events.txt"
  events_rate="$(sed -n 's/^  accepted *\([0-9]*\) events\/s.*/\1/p' "$work/events.txt")"
  settle
fi
if phase events-wrk; then
  echo
  wrk -t2 -c"$events_connections" -d"${seconds}s" -s "$here/events.lua" "$url" -- "$token" 1000 100 | tee "$work/events-wrk.txt"
  events_wrk_rate="$(sed -n 's/.* = \([0-9]*\) events\/s.*/\1/p' "$work/events-wrk.txt")"
fi

metrics="$(curl -s "$url/metrics" | grep -E "^ledger_(groups_committed|events_appended|append_group_commands_(sum|count)|wal_syncs_total)" || true)"
stop "$pid"
pid=""

seed_rps="" seed_note=""
if phase seed; then
  echo
  echo "== the seed's stack: FastAPI $(/usr/bin/python3 -c 'import fastapi; print(fastapi.__version__)' 2>/dev/null || echo '?') on uvicorn (1 worker) over PostgreSQL 15 =="
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  missing=()
  [[ -n "$pg_bin" ]] || missing+=(postgresql)
  for m in fastapi:python3-fastapi uvicorn:python3-uvicorn asyncpg:python3-asyncpg; do
    /usr/bin/python3 -c "import ${m%%:*}" 2>/dev/null || missing+=("${m#*:}")
  done
  if [[ ${#missing[@]} -gt 0 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; }
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    missing=()
  fi
  if [[ ${#missing[@]} -gt 0 || $(id -u) -ne 0 ]] || ! id postgres >/dev/null 2>&1; then
    seed_note="skipped: needs root and ${missing[*]:-the postgres user}"
    echo "$seed_note"
  else
    pg_dir="$(mktemp -d /tmp/ledgerd-bench-pg-XXXXXX)"
    pg_ctl="$pg_bin/pg_ctl"
    chown postgres: "$pg_dir"
    runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres >"$work/initdb.log" 2>&1 \
      || { cat "$work/initdb.log" >&2; exit 70; }
    # Durable as ledgerd is: fsync, synchronous_commit and full_page_writes keep their defaults (on).
    runuser -u postgres -- "$pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
      -o "-c listen_addresses='' -k $pg_dir -c max_connections=100" start >/dev/null \
      || { cat "$pg_dir/server.log" >&2; exit 70; }
    runuser -u postgres -- "$pg_bin/createdb" -h "$pg_dir" bench
    sport="$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    /usr/bin/python3 "$here/seed_stack/app.py" --dsn "postgresql://postgres@/bench?host=$pg_dir" \
      --token "$token" --port "$sport" >"$work/seed.log" 2>&1 &
    other_pid=$!
    wait_listening "$work/seed.log" "$other_pid" >/dev/null
    check="$(curl -s --retry 20 --retry-connrefused --retry-delay 0 -X POST \
      "http://127.0.0.1:$sport/api/v1/usage/consume" -H "Authorization: Bearer $token" \
      -H "Content-Type: application/json" \
      --data '{"user_id":"bench-user","service":"chat","idempotency_key":"seed-check"}')"
    [[ "$check" == *'"allowed":true'* ]] || { echo "seed consume check failed: $check" >&2; cat "$work/seed.log" >&2; exit 70; }
    consume_wrk "http://127.0.0.1:$sport" seed
    seed_rps="$wrk_rps"
    stop "$other_pid"
    other_pid=""
    stop_pg
  fi
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.0f", 100*a/b; else printf "?" }'; }
echo
echo "== summary (kafka=$kafka, $connections connections, $(nproc) cores, ${seconds} s per phase) =="
phase trivial && echo "trivial cpp-httplib POST consume   ${trivial_rps:-?} req/s (baseline)"
phase livez && echo "ledgerd GET /livez                 ${livez_rps:-?} req/s"
if phase consume; then
  line="ledgerd POST /usage/consume        ${consume_rps:-?} req/s (target >= 8000)"
  [[ -n "$trivial_rps" ]] && line+="; $(ratio "$consume_rps" "$trivial_rps")% of trivial cpp-httplib (target >= 80%)"
  [[ -n "$livez_rps" ]] && line+="; $(ratio "$consume_rps" "$livez_rps")% of ledgerd /livez"
  echo "$line"
fi
phase latency && echo "ledgerd consume p99 at $rate/s      ${p99:-?} ms (target <= 10 ms at 4000/s, half of 8000)"
[[ -n "$half_rate" ]] && echo "ledgerd consume p99 at $half_rate/s     ${half_p99:-?} ms (at half the consume rate above)"
phase events && echo "ledgerd POST /usage/events         ${events_rate:-?} events/s (ledgerctl bench http, 1000-item bodies, $events_connections connections; target >= 200000)"
phase events-wrk && echo "ledgerd POST /usage/events (wrk)   ${events_wrk_rate:-?} events/s (wrk events.lua, 1000-item bodies, $events_connections connections)"
if phase seed; then
  if [[ -n "$seed_rps" ]]; then
    line="seed FastAPI + PostgreSQL consume  $seed_rps req/s"
    [[ -n "$consume_rps" ]] && line+=" (ledgerd consume = $(awk -v a="$consume_rps" -v b="$seed_rps" 'BEGIN{ if (b > 0) printf "%.1f", a/b; else printf "?" }')x)"
    echo "$line"
  else
    echo "seed FastAPI + PostgreSQL consume  $seed_note"
  fi
fi
echo "$metrics"
