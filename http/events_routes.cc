// GET /api/v1/events and GET /api/v1/audit/head: the log and its chain head, for admins.
#include <algorithm>
#include <cstdio>

#include "events/limits.h"
#include "http/limits.h"
#include "http/problem.h"
#include "http/routes.h"

namespace ledger::http {

namespace {

constexpr size_t kDefaultEventsLimit = 100;

bool ParseUint64(const std::string& text, uint64_t* out) {
  if (text.empty() || text.size() > 20) return false;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) return false;
    value = value * 10 + digit;
  }
  *out = value;
  return true;
}

// Reads an optional query parameter. Repeating it or exceeding `bytes_max` is a 400.
void ListEvents(const AppContext& context, const httplib::Request& req, httplib::Response& res) {
  if (!RequireLedger(context.ledger, res)) return;
  std::string after_text, limit_text;
  EventFilter filter;
  if (!QueryParam(req, "after", limits::kQueryValueBytesMax, &after_text, res) ||
      !QueryParam(req, "limit", limits::kQueryValueBytesMax, &limit_text, res) ||
      !QueryParam(req, "subject", ledger::limits::kSubjectBytesMax, &filter.subject, res) ||
      !QueryParam(req, "type", ledger::limits::kEventTypeBytesMax, &filter.type, res)) {
    return;
  }
  uint64_t after = 0;
  if (!after_text.empty() && !ParseUint64(after_text, &after)) {
    WriteProblem(400, "invalid_parameter", "'after' must be a non-negative integer position", &res);
    return;
  }
  uint64_t limit = kDefaultEventsLimit;
  if (!limit_text.empty() &&
      (!ParseUint64(limit_text, &limit) || limit == 0 || limit > ledger::limits::kReadEventsMax)) {
    WriteProblem(400, "invalid_parameter",
                 "'limit' must be an integer in 1.." + std::to_string(ledger::limits::kReadEventsMax), &res);
    return;
  }
  // Every event at or below `head` is readable once Head() returned it.
  const Position head = context.ledger->Head();
  // A cursor past the end names events this log never had (one kept from another store, or a
  // restored older copy): an empty page forever would hide that.
  if (after > head.value()) {
    WriteProblem(409, "after_past_head",
                 "'after' is " + std::to_string(after) + " but the log ends at " +
                     std::to_string(head.value()) + ": a cursor from another store?",
                 &res);
    return;
  }
  // A type filter may match few events: the page looks at most kEventsExaminedMax positions past
  // `after` (a subject alone is read through its own index, where every event read matches).
  uint64_t until = head.value();
  if (!filter.type.empty() && until > after && until - after > limits::kEventsExaminedMax) {
    until = after + limits::kEventsExaminedMax;
  }
  filter.up_to = Position(until);
  std::string body = "{\"events\":[";
  uint64_t last = after;  // position of the last event in the page
  size_t count = 0;
  bool exhausted = false;  // a read came back short: every match up to `until` is in the page
  bool full = false;       // the next event would pass limits::kEventsPageBytesMax
  while (count < limit && !exhausted && !full) {
    const size_t chunk = std::min<size_t>(limit - count, limits::kEventsPageReadChunk);
    std::vector<Event> events;
    Status s = context.ledger->ReadEvents(Position(last), chunk, filter, &events);
    if (!s.ok()) {
      WriteStatusProblem(s, &res);
      return;
    }
    exhausted = events.size() < chunk;
    for (const Event& event : events) {
      std::string json = ToEnvelopeJson(event);
      if (count > 0 && body.size() + 1 + json.size() > limits::kEventsPageBytesMax) {
        full = true;
        break;
      }
      if (count > 0) body += ',';
      body += json;
      ++count;
      last = event.position.value();
    }
  }
  // After a short read the next page can start at `until` (the head, unless the type filter's
  // bound came first) even when the filter skipped the events before it; after a full page (by
  // count or by bytes) it starts after the last event.
  const uint64_t next_after = exhausted && !full ? std::max(last, until) : last;
  body += "],\"next_after\":" + std::to_string(next_after) + "}";
  WriteJsonAt(200, std::move(body), head, &res);
}

void AuditHead(const AppContext& context, httplib::Response& res) {
  if (!RequireLedger(context.ledger, res)) return;
  // Head() and HeadHash() are two reads; take the hash from the stored event at the head
  // position instead, so that the pair is always consistent.
  const Position head = context.ledger->Head();
  Hash hash{};  // genesis: all zeroes
  if (head.value() > 0) {
    std::vector<Event> events;
    Status s = context.ledger->ReadEvents(Position(head.value() - 1), 1, EventFilter{}, &events);
    if (!s.ok()) {
      WriteStatusProblem(s, &res);
      return;
    }
    if (events.empty() || events.front().position != head) {
      WriteProblem(500, "internal", "the head event is not readable", &res);
      return;
    }
    hash = events.front().hash;
  }
  std::string body = "{\"position\":" + std::to_string(head.value()) + ",\"hash\":\"" + HexEncode(hash) + "\"}";
  WriteJsonAt(200, std::move(body), head, &res);
}

}  // namespace

void AddEventsRoutes(const AppContext& context, RouteTable* routes) {
  routes->Add("GET", "/api/v1/events", "/api/v1/events", Policy::kAdmin,
              [context](const httplib::Request& req, httplib::Response& res, const Identity&) {
                ListEvents(context, req, res);
              });
  routes->Add("GET", "/api/v1/audit/head", "/api/v1/audit/head", Policy::kAdmin,
              [context](const httplib::Request&, httplib::Response& res, const Identity&) {
                AuditHead(context, res);
              });
}

}  // namespace ledger::http
