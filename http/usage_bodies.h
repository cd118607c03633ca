// The request bodies of POST /api/v1/usage/consume and POST /api/v1/usage/events as
// http/usage_routes.cc reads them, on their own so that the fuzz target (tests/fuzz) can call
// them without a ledger: not part of the http API.
#pragma once

#include <httplib.h>

#include <string>
#include <vector>

#include "events/status.h"
#include "http/route.h"
#include "projections/usage.h"

namespace ledger::http {

// A consume: its body, and its Idempotency-Key header, for `identity` (a user names itself, a
// service names the user). 400 invalid_json / invalid_idempotency_key, 404 for another user,
// 422 validation_failed / unknown_field / unknown_service.
Status ParseConsume(const httplib::Request& req, const Identity& identity,
                    projections::ConsumeRequest* out);

// A batch's envelope ({"events":[1..1000 items]}: 400 invalid_json, 413 too_many_items, 422
// unknown_field / validation_failed) and each item, an invalid one with its invalid_reason.
Status ParseBatch(const std::string& body, std::vector<projections::UsageBatchItem>* items);

}  // namespace ledger::http
