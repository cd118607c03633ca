"""The seed's stack for the HTTP benchmark's comparison (issue 4: "compared, in the same run, with
the seed's stack"): FastAPI on uvicorn over PostgreSQL, as the Python system that ledgerd
replaces runs it (../shared/seeds/), serving the one route the benchmark drives.

POST /api/v1/usage/consume does what a hand-rolled FastAPI + PostgreSQL backend does for it, with
the same guarantees ledgerd gives: a service token, the user's subscription and plan, a per-user
idempotency key, the window's counter checked and incremented in ONE transaction (so concurrent
gateways cannot pass the limit), committed durably (PostgreSQL defaults: fsync on,
synchronous_commit on) before the answer. The request and answer shapes are ledgerd's, so
tools/bench/consume.lua drives both unchanged.

  /usr/bin/python3 app.py --dsn postgresql:///bench?host=/run/pg --token T --port 8090 [--workers 1]

Debian 12 packages: python3-fastapi python3-uvicorn python3-asyncpg postgresql.
Not part of ledgerd: a benchmark baseline only (tools/bench/run_http_bench.sh starts it).
"""
import argparse
import datetime as dt
import os
from typing import Optional

import asyncpg
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, constr, conint

SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
  id text PRIMARY KEY, call_limit integer, services text[] NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
  user_id text PRIMARY KEY, plan_id text NOT NULL REFERENCES plans(id), status text NOT NULL,
  current_period_start timestamptz, current_period_end timestamptz);
CREATE TABLE IF NOT EXISTS usage_events (
  id bigserial PRIMARY KEY, user_id text NOT NULL, service text NOT NULL,
  quantity integer NOT NULL, idempotency_key text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (user_id, idempotency_key));
CREATE TABLE IF NOT EXISTS usage_counters (
  user_id text NOT NULL, window_start timestamptz NOT NULL, used bigint NOT NULL,
  PRIMARY KEY (user_id, window_start));
"""

SEED = """
INSERT INTO plans VALUES
  ('trial', 100, ARRAY['chat','search','bolt-diy']),
  ('starter', 1000, ARRAY['chat','search','bolt-diy']),
  ('professional', 10000, ARRAY['chat','search','bolt-diy','brigade']),
  ('enterprise', NULL, ARRAY['chat','search','bolt-diy','brigade','presenton'])
ON CONFLICT DO NOTHING;
"""


class ConsumeRequest(BaseModel):
    user_id: constr(min_length=1, max_length=128)
    service: constr(min_length=1, max_length=64)
    quantity: conint(ge=1, le=10000) = 1
    idempotency_key: constr(min_length=1, max_length=128)


def make_app(dsn: str, token: str) -> FastAPI:
    app = FastAPI()
    state = {}

    @app.on_event("startup")
    async def startup():
        state["pool"] = await asyncpg.create_pool(dsn, min_size=4, max_size=20)

    @app.on_event("shutdown")
    async def shutdown():
        await state["pool"].close()

    @app.post("/api/v1/usage/consume")
    async def consume(req: ConsumeRequest, authorization: Optional[str] = Header(None)):
        if authorization != "Bearer " + token:
            raise HTTPException(status_code=401, detail="unauthorized")
        async with state["pool"].acquire() as con:
            async with con.transaction():
                sub = await con.fetchrow(
                    "SELECT s.status, s.current_period_start, p.call_limit, p.services "
                    "FROM subscriptions s JOIN plans p ON p.id = s.plan_id WHERE s.user_id = $1",
                    req.user_id)
                if sub is None or sub["status"] not in ("active", "trialing"):
                    raise HTTPException(status_code=402, detail="no active subscription")
                if req.service not in sub["services"]:
                    raise HTTPException(status_code=403, detail="service not in plan")
                inserted = await con.fetchval(
                    "INSERT INTO usage_events (user_id, service, quantity, idempotency_key) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id",
                    req.user_id, req.service, req.quantity, req.idempotency_key)
                window = sub["current_period_start"] or dt.datetime.now(dt.timezone.utc).replace(
                    day=1, hour=0, minute=0, second=0, microsecond=0)
                if inserted is None:  # a retry: answer from the counter, count nothing
                    used = await con.fetchval(
                        "SELECT used FROM usage_counters WHERE user_id = $1 AND window_start = $2",
                        req.user_id, window)
                else:
                    used = await con.fetchval(
                        "INSERT INTO usage_counters (user_id, window_start, used) "
                        "VALUES ($1, $2, $3) ON CONFLICT (user_id, window_start) "
                        "DO UPDATE SET used = usage_counters.used + EXCLUDED.used RETURNING used",
                        req.user_id, window, req.quantity)
                limit = sub["call_limit"]
                if limit is not None and used > limit:
                    # Leaving the block by an exception rolls the transaction back.
                    raise HTTPException(status_code=429, detail="quota exceeded")
        remaining = None if limit is None else limit - used
        return JSONResponse({"allowed": True, "used": used, "limit": limit,
                             "remaining": remaining})

    return app


async def prepare(dsn: str, user_id: str, plan: str):
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(SCHEMA)
        await con.execute(SEED)
        now = dt.datetime.now(dt.timezone.utc)
        await con.execute(
            "INSERT INTO subscriptions VALUES ($1, $2, 'active', $3, $4) "
            "ON CONFLICT (user_id) DO UPDATE SET plan_id = EXCLUDED.plan_id",
            user_id, plan, now - dt.timedelta(days=1), now + dt.timedelta(days=29))
    finally:
        await con.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--token", default=os.environ.get("SEED_TOKEN", ""))
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--user", default="bench-user")
    ap.add_argument("--plan", default="enterprise")
    args = ap.parse_args()
    if not args.token:
        ap.error("--token (or SEED_TOKEN) is required")
    import asyncio
    asyncio.run(prepare(args.dsn, args.user, args.plan))
    os.environ["SEED_DSN"], os.environ["SEED_TOKEN"] = args.dsn, args.token
    # Printed before uvicorn binds: callers retry until the port answers.
    print(f"listening on http://127.0.0.1:{args.port}", flush=True)
    uvicorn.run("app:factory", factory=True, host="127.0.0.1", port=args.port,
                workers=args.workers, log_level="warning", access_log=False,
                app_dir=os.path.dirname(os.path.abspath(__file__)))


def factory() -> FastAPI:
    return make_app(os.environ["SEED_DSN"], os.environ["SEED_TOKEN"])


if __name__ == "__main__":
    main()
