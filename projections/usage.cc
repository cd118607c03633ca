#include "projections/usage.h"

#include <rapidjson/document.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <unordered_map>

#include "events/coding.h"
#include "events/event.h"
#include "projections/json_write.h"
#include "projections/limits.h"

namespace ledger::projections {

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr char kCounterPrefix[] = "c/";
constexpr char kTimeIndexPrefix[] = "t/";
constexpr char kDedupePrefix[] = "k/";
constexpr char kEpochKey[] = "e";
// 6: 5 (its part count may be 0) and the window's end before a scheduled end cut it (written
// only when one did); 5: 2 and what a restarted period carried in, one part per window that used
// the calls, each with its end (written only when it carried something, so a window that never
// restarted keeps its bytes); 4: one carry and its end, 3: one carry without an end (both read,
// never written); 2: thresholds announced per limit (a list); 1: for the last limit only (read,
// never written).
constexpr uint8_t kCounterFormatVersionUncutEnd = 6;      // 5 and the uncut window end
constexpr uint8_t kCounterFormatVersionCarries = 5;       // the carry's parts, each with its end
constexpr uint8_t kCounterFormatVersionCarriedUntil = 4;  // one carry and when it ends
constexpr uint8_t kCounterFormatVersionCarried = 3;       // one carry without its end
constexpr uint8_t kCounterFormatVersion = 2;
constexpr uint8_t kCounterFormatVersionOneLimit = 1;
constexpr int64_t kMicrosPerSecond = 1'000'000;
constexpr int64_t kBillingPeriodOneWindowMaxSeconds = kUsageWindowSecondsMax;

// ---- civil time (Howard Hinnant's algorithms, proleptic Gregorian, UTC) --------------------------

int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2);
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

unsigned DaysInMonth(int64_t y, unsigned m) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m == 2) {
    const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return leap ? 29 : 28;
  }
  return kDays[m - 1];
}

int64_t FloorSeconds(int64_t t_us) { return FloorDiv(t_us, kMicrosPerSecond); }

// ---- JSON helpers --------------------------------------------------------------------------------

void TimeSeconds(JsonWriter* w, int64_t t_s) { json::String(w, FormatRfc3339Seconds(t_s)); }

// A window's three JSON strings, formatted once per decision.
struct WindowText {
  explicit WindowText(const UsageWindow& window)
      : start(FormatRfc3339Seconds(window.start_s)),
        end(FormatRfc3339Seconds(window.end_s)),
        kind(WindowKindName(window.kind)) {}
  std::string start, end;
  std::string_view kind;
};

void WriteWindowStrings(JsonWriter* w, const WindowText& text) {
  json::Key(w, "window_start");
  json::String(w, text.start);
  json::Key(w, "window_end");
  json::String(w, text.end);
  json::Key(w, "window_kind");
  json::String(w, text.kind);
}

void WriteWindow(JsonWriter* w, const UsageWindow& window) {
  json::Key(w, "window_start");
  TimeSeconds(w, window.start_s);
  json::Key(w, "window_end");
  TimeSeconds(w, window.end_s);
  json::Key(w, "window_kind");
  json::String(w, WindowKindName(window.kind));
}

const rapidjson::Value* Member(const rapidjson::Value& object, const char* name) {
  auto it = object.FindMember(name);
  return it == object.MemberEnd() ? nullptr : &it->value;
}

Status Malformed(std::string_view type, std::string_view what) {
  return Status::InvalidArgument("malformed_event",
                                 std::string(type) + ": " + std::string(what));
}

Status ReadString(const rapidjson::Value& object, const char* name, std::string_view type,
                  std::string_view* out) {
  const rapidjson::Value* v = Member(object, name);
  if (v == nullptr || !v->IsString()) return Malformed(type, std::string(name) + " missing");
  *out = std::string_view(v->GetString(), v->GetStringLength());
  return Status::OK();
}

Status ReadInt(const rapidjson::Value& object, const char* name, std::string_view type,
               int64_t* out) {
  const rapidjson::Value* v = Member(object, name);
  if (v == nullptr || !v->IsInt64()) return Malformed(type, std::string(name) + " missing");
  *out = v->GetInt64();
  return Status::OK();
}

Status ReadNullableInt(const rapidjson::Value& object, const char* name, std::string_view type,
                       std::optional<int64_t>* out) {
  const rapidjson::Value* v = Member(object, name);
  if (v == nullptr || !(v->IsNull() || v->IsInt64())) {
    return Malformed(type, std::string(name) + " missing");
  }
  if (v->IsNull()) {
    out->reset();
  } else {
    *out = v->GetInt64();
  }
  return Status::OK();
}

Status ReadTime(const rapidjson::Value& object, const char* name, std::string_view type,
                int64_t* out_s) {
  std::string_view text;
  LEDGER_RETURN_IF_ERROR(ReadString(object, name, type, &text));
  int64_t us = 0;
  if (!ParseRfc3339(text, &us)) return Malformed(type, std::string(name) + " is not a time");
  *out_s = FloorSeconds(us);
  return Status::OK();
}

// An optional time member (absent: -1).
Status ReadOptionalTime(const rapidjson::Value& object, const char* name, std::string_view type,
                        int64_t* out_s) {
  *out_s = -1;
  if (Member(object, name) == nullptr) return Status::OK();
  return ReadTime(object, name, type, out_s);
}

// The fields every usage.* event names its window with.
struct EventWindow {
  std::string_view user_id;
  UsageWindow window;
};

Status ReadEventWindow(const rapidjson::Value& data, std::string_view type, EventWindow* out) {
  LEDGER_RETURN_IF_ERROR(ReadString(data, "user_id", type, &out->user_id));
  if (out->user_id.empty()) return Malformed(type, "user_id empty");
  LEDGER_RETURN_IF_ERROR(ReadTime(data, "window_start", type, &out->window.start_s));
  LEDGER_RETURN_IF_ERROR(ReadTime(data, "window_end", type, &out->window.end_s));
  std::string_view kind;
  LEDGER_RETURN_IF_ERROR(ReadString(data, "window_kind", type, &kind));
  if (!ParseWindowKind(kind, &out->window.kind)) return Malformed(type, "unknown window_kind");
  if (out->window.start_s < 0) return Malformed(type, "window_start before 1970");
  return Status::OK();
}

// ---- rows ----------------------------------------------------------------------------------------

void PutI64(std::string* dst, int64_t v) { PutFixed64BE(dst, static_cast<uint64_t>(v)); }
bool GetI64(std::string_view* in, int64_t* v) {
  uint64_t u = 0;
  if (!GetFixed64BE(in, &u)) return false;
  *v = static_cast<int64_t>(u);
  return true;
}
bool GetU8(std::string_view* in, uint8_t* v) {
  if (in->empty()) return false;
  *v = static_cast<uint8_t>((*in)[0]);
  in->remove_prefix(1);
  return true;
}

// t/<start><user>\0<kind>.
std::string TimeIndexKey(int64_t window_start_s, std::string_view user_id, WindowKind kind) {
  std::string key(kTimeIndexPrefix);
  PutFixed64BE(&key, static_cast<uint64_t>(window_start_s));
  key.append(user_id);
  key.push_back('\0');
  key.push_back(static_cast<char>(kind));
  return key;
}

std::string CounterPrefix(std::string_view user_id) {
  std::string key(kCounterPrefix);
  key.append(user_id);
  key.push_back('\0');
  return key;
}

// The keys of a store written before a window's kind was part of them (c/<user>\0<start>,
// t/<start><user>): the counter of whichever window kind last wrote it. Read as the window of
// the kind the row names, and moved to the keyed form by the next write of that window.
std::string StartOnlyCounterKey(std::string_view user_id, int64_t window_start_s) {
  std::string key = CounterPrefix(user_id);
  PutFixed64BE(&key, static_cast<uint64_t>(window_start_s));
  return key;
}
std::string StartOnlyTimeIndexKey(int64_t window_start_s, std::string_view user_id) {
  std::string key(kTimeIndexPrefix);
  PutFixed64BE(&key, static_cast<uint64_t>(window_start_s));
  key.append(user_id);
  return key;
}

// Whether two windows count in one counter row: the same start and kind. Not the end: it is the
// last record's (a billing month carried on past its period keeps its counter when the renewal
// names the same start).
bool SameCounter(const UsageWindow& a, const UsageWindow& b) {
  return a.start_s == b.start_s && a.kind == b.kind;
}

// Where a window's counter row was found.
enum class CounterStored : uint8_t {
  kAbsent,
  kKeyed,      // UsageCounterKey
  kStartOnly,  // StartOnlyCounterKey, its row naming the window's kind
};

// The counter of the user's window (start, kind), NotFound when none.
Status ReadCounter(const StateReader& state, std::string_view user_id, int64_t window_start_s,
                   WindowKind kind, UsageCounter* out, CounterStored* stored) {
  *stored = CounterStored::kAbsent;
  std::string value;
  Status s = state.Get(kUsageFamily, UsageCounterKey(user_id, window_start_s, kind), &value);
  if (s.ok()) {
    LEDGER_RETURN_IF_ERROR(DecodeUsageCounter(value, out));
    *stored = CounterStored::kKeyed;
    return Status::OK();
  }
  if (!s.IsNotFound()) return s;
  LEDGER_RETURN_IF_ERROR(
      state.Get(kUsageFamily, StartOnlyCounterKey(user_id, window_start_s), &value));
  LEDGER_RETURN_IF_ERROR(DecodeUsageCounter(value, out));
  if (out->kind != kind) return Status::NotFound("no usage counter for that window");
  *stored = CounterStored::kStartOnly;
  return Status::OK();
}

bool CounterKeyStart(std::string_view key, size_t prefix_size, int64_t* start_s);

// What a restarted period carries into a fresh window: `from`'s used, per-service counts and
// announced thresholds (`from` as it counts at the event's time: EndCarryAt), each call until it
// would have stopped counting without the restart: the calls `from` carried until their own
// ends, the calls it used itself until `from`'s window ends. (Passed on whole until `from`'s end,
// the calls `from` carried would count for the whole middle window after a second restart: tiny
// with 10 used, upgraded two days before the month's end, 5 used, restarted again a day later --
// the 10 a month past the end of the month that used them.) A part of `from` with no end (a row
// written before carries ended) ends with `from`'s own calls.
void CarryInto(const UsageCounter& from, UsageCounter* out) {
  out->used = from.used;
  out->services = from.services;
  out->announced = from.announced;
  out->carried.clear();
  UsageCarry own;
  own.calls = from.used;
  own.services = from.services;
  own.until_s = from.UncutEnd();
  for (const UsageCarry& part : from.carried) {
    if (part.until_s <= 0) continue;
    own.calls -= part.calls;
    for (const auto& [service, count] : part.services) {
      auto it = own.services.find(service);
      if (it == own.services.end()) continue;
      it->second -= count;
      if (it->second <= 0) own.services.erase(it);
    }
    out->carried.push_back(part);
  }
  own.calls = std::max<int64_t>(0, own.calls);
  if (own.calls == 0 && own.services.empty()) return;
  for (UsageCarry& part : out->carried) {
    if (part.until_s != own.until_s) continue;
    part.calls += own.calls;
    for (const auto& [service, count] : own.services) part.services[service] += count;
    return;
  }
  out->carried.push_back(std::move(own));
}

// A fresh billing month's carry (usage.h, "Period restarts"): when `window` begins before the
// end of the user's latest billing month, that window's start (`*from_start`, -1 when none) and
// counter (`*from`). The scenario: a Professional user over quota switches yearly -> monthly,
// Stripe restarts the period now, and the new window began at 0 -- 10,000 calls for a switch the
// unused-time credit paid for, and again at every switch back. Only the latest billing month
// counts (a back-dated window older than it carries nothing), and only one that overlaps: a
// window is at most kUsageWindowSecondsMax long, so the scan starts that far back. Decided here
// (the deciders, the queries' previews), recorded in the event (`carry_from`), and folded from
// the event only (ApplyCarryFrom).
Status FindCarrySource(const StateReader& state, std::string_view user_id,
                       const UsageWindow& window, int64_t* from_start, UsageCounter* from) {
  *from_start = -1;
  if (window.kind != WindowKind::kBillingMonth) return Status::OK();
  const std::string prefix = CounterPrefix(user_id);
  std::string scan_from = prefix;
  PutFixed64BE(&scan_from, static_cast<uint64_t>(
                               std::max<int64_t>(0, window.start_s - kUsageWindowSecondsMax)));
  int64_t latest_start = -1;
  UsageCounter latest;
  Status decode;
  const auto visit = [&](std::string_view key, std::string_view value) {
    int64_t start = 0;
    if (!CounterKeyStart(key, prefix.size(), &start)) return true;
    UsageCounter counter;
    decode = DecodeUsageCounter(value, &counter);
    if (!decode.ok()) return false;
    if (counter.kind == WindowKind::kBillingMonth) {
      latest_start = start;
      latest = std::move(counter);
    }
    return true;
  };
  LEDGER_RETURN_IF_ERROR(state.ScanFrom(kUsageFamily, prefix, scan_from, visit));
  LEDGER_RETURN_IF_ERROR(decode);
  if (latest_start < 0 || latest_start >= window.start_s ||
      latest.UncutEnd() <= window.start_s) {
    return Status::OK();
  }
  *from_start = latest_start;
  *from = std::move(latest);
  return Status::OK();
}

// Reads the counter, or a fresh one for `window` (`*stored` kAbsent) -- as the fold reads it:
// a fresh window starts at 0 unless its event says it carries (ApplyCarryFrom).
Status LoadStoredCounter(const StateReader& state, std::string_view user_id,
                         const UsageWindow& window, UsageCounter* out, CounterStored* stored) {
  Status s = ReadCounter(state, user_id, window.start_s, window.kind, out, stored);
  if (s.IsNotFound()) {
    *stored = CounterStored::kAbsent;
    *out = UsageCounter();
    out->window_end_s = window.end_s;
    out->kind = window.kind;
    return Status::OK();
  }
  return s;
}

// LoadStoredCounter, and for a fresh window the carry a restarted period would bring into it
// (FindCarrySource), `*carry_from` set to the window carried from (-1: none), as they count at
// `now_s` (UsageCounter::EndCarryAt: none once the window carried from has ended). The deciders
// read a window's count this way, at their command's time (the events' time, which the fold ends
// carries at), and record `carry_from` in the event when it is set; the queries preview a window
// not written yet this way, as the consume that would write it counts.
Status LoadCounter(const StateReader& state, std::string_view user_id, const UsageWindow& window,
                   int64_t now_s, UsageCounter* out, CounterStored* stored,
                   int64_t* carry_from = nullptr) {
  if (carry_from != nullptr) *carry_from = -1;
  LEDGER_RETURN_IF_ERROR(LoadStoredCounter(state, user_id, window, out, stored));
  if (*stored != CounterStored::kAbsent) {
    out->EndCarryAt(now_s);
    return Status::OK();
  }
  int64_t from_start = -1;
  UsageCounter from;
  LEDGER_RETURN_IF_ERROR(FindCarrySource(state, user_id, window, &from_start, &from));
  if (from_start < 0 || now_s >= from.UncutEnd()) return Status::OK();
  from.EndCarryAt(now_s);
  CarryInto(from, out);
  if (carry_from != nullptr) *carry_from = from_start;
  return Status::OK();
}

// When `quantity` calls that the window's `limit` refuses at `used` are taken at the earliest:
// the first end of a carried part (the end of the window that used those calls) at which the
// parts that stopped counting by then leave room, else the window's end.
int64_t QuotaFreesAt(const UsageCounter& counter, const UsageWindow& window, int64_t limit,
                     int64_t used, int64_t quantity) {
  std::vector<std::pair<int64_t, int64_t>> ends;  // (until_s, calls) ending within the window
  for (const UsageCarry& part : counter.carried) {
    if (part.until_s > 0 && part.until_s < window.end_s) {
      ends.emplace_back(part.until_s, part.calls);
    }
  }
  std::sort(ends.begin(), ends.end());
  int64_t freed = 0;
  for (const auto& [until_s, calls] : ends) {
    freed += calls;
    if (used - freed + quantity <= limit) return until_s;
  }
  return window.end_s;
}

// The fold's side of a carry: an event whose window the decider opened with a carry names the
// window carried from (`carry_from`), and only then does a fresh window start with that
// window's counts. Events without it -- everything written before the decision was recorded --
// fold as they always did: a store rebuilt from a log of windows that restarted before the
// carry existed (Jan 10, Starter with 1,000 used upgraded to Professional; 9,500 used since,
// each consume admitted against 9,500) must not find 10,500 in a window the events say holds
// 9,500. `counter` must be fresh (`stored` kAbsent); a window named that holds no counter
// carries nothing. The carry counts as of `at_s`, the event's time (LoadCounter's now when the
// decider named it; an event written before carries ended drops it there if that window had
// ended).
Status ApplyCarryFrom(const StateReader& state, std::string_view user_id, std::string_view type,
                      const UsageWindow& window, int64_t carry_from_s, int64_t at_s,
                      UsageCounter* counter) {
  if (window.kind != WindowKind::kBillingMonth || carry_from_s < 0 ||
      carry_from_s >= window.start_s) {
    return Malformed(type, "carry_from must be before a billing_month window's start");
  }
  UsageCounter from;
  CounterStored from_stored = CounterStored::kAbsent;
  Status s = ReadCounter(state, user_id, carry_from_s, WindowKind::kBillingMonth, &from,
                         &from_stored);
  if (s.IsNotFound()) return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  from.EndCarryAt(at_s);
  CarryInto(from, counter);
  counter->EndCarryAt(at_s);
  return Status::OK();
}

Status StoreCounter(std::string_view user_id, const UsageWindow& window, CounterStored stored,
                    const UsageCounter& counter, RowWriter* rows) {
  if (stored == CounterStored::kStartOnly) {
    LEDGER_RETURN_IF_ERROR(
        rows->Delete(kUsageFamily, StartOnlyCounterKey(user_id, window.start_s)));
    LEDGER_RETURN_IF_ERROR(
        rows->Delete(kUsageFamily, StartOnlyTimeIndexKey(window.start_s, user_id)));
  }
  if (stored != CounterStored::kKeyed) {
    LEDGER_RETURN_IF_ERROR(
        rows->Put(kUsageFamily, TimeIndexKey(window.start_s, user_id, window.kind), ""));
  }
  return rows->Put(kUsageFamily, UsageCounterKey(user_id, window.start_s, window.kind),
                   EncodeUsageCounter(counter));
}

// ---- fold ----------------------------------------------------------------------------------------

Status ApplyRecorded(const Event& event, const rapidjson::Value& data, const StateReader& state,
                     RowWriter* rows) {
  const std::string_view type = kUsageRecordedV1;
  EventWindow w;
  LEDGER_RETURN_IF_ERROR(ReadEventWindow(data, type, &w));
  std::string_view service, key;
  LEDGER_RETURN_IF_ERROR(ReadString(data, "service", type, &service));
  LEDGER_RETURN_IF_ERROR(ReadString(data, "idempotency_key", type, &key));
  int64_t quantity = 0;
  LEDGER_RETURN_IF_ERROR(ReadInt(data, "quantity", type, &quantity));
  if (quantity <= 0) return Malformed(type, "quantity must be positive");
  std::optional<int64_t> limit;
  LEDGER_RETURN_IF_ERROR(ReadNullableInt(data, "limit", type, &limit));
  int64_t carry_from = -1;
  LEDGER_RETURN_IF_ERROR(ReadOptionalTime(data, "carry_from", type, &carry_from));
  int64_t uncut_end = -1;
  LEDGER_RETURN_IF_ERROR(ReadOptionalTime(data, "window_uncut_end", type, &uncut_end));
  if (uncut_end >= 0 && uncut_end <= w.window.end_s) {
    return Malformed(type, "window_uncut_end must be after window_end");
  }

  const int64_t at_s = FloorSeconds(event.time_us);
  UsageCounter counter;
  CounterStored stored = CounterStored::kAbsent;
  LEDGER_RETURN_IF_ERROR(LoadStoredCounter(state, w.user_id, w.window, &counter, &stored));
  counter.EndCarryAt(at_s);
  if (carry_from >= 0 && stored == CounterStored::kAbsent) {
    LEDGER_RETURN_IF_ERROR(
        ApplyCarryFrom(state, w.user_id, type, w.window, carry_from, at_s, &counter));
  }
  counter.window_end_s = w.window.end_s;
  counter.uncut_end_s = std::max<int64_t>(0, uncut_end);
  counter.kind = w.window.kind;
  counter.used += quantity;
  counter.recorded += quantity;
  counter.limit = limit;
  auto it = counter.services.find(service);
  if (it == counter.services.end()) {
    counter.services.emplace(std::string(service), quantity);
  } else {
    it->second += quantity;
  }
  LEDGER_RETURN_IF_ERROR(StoreCounter(w.user_id, w.window, stored, counter, rows));
  return rows->Put(kUsageFamily, UsageDedupeKey(w.user_id, key),
                   EncodeUsageKeyRecord(event.position.value(), service, quantity));
}

// One item of a usage.batch_recorded.v1 as the fold reads it: views into the event's data.
struct BatchItemFields {
  enum : uint8_t {
    kKey = 1,
    kService = 2,
    kQuantity = 4,
    kWindowStart = 8,
    kWindowEnd = 16,
    kWindowKind = 32,
    kLimit = 64,
    kAll = 127
  };
  std::string_view key, service, window_start, window_end, window_kind;
  std::string_view carry_from;        // optional: empty when absent
  std::string_view window_uncut_end;  // optional: empty when absent
  int64_t quantity = 0;
  std::optional<int64_t> limit;
  uint8_t seen = 0;  // the fields above that were read
};

// Reads a usage.batch_recorded.v1's data with rapidjson's SAX reader, in situ: a batch event
// holds up to 1000 items, and a DOM of them (built and then searched member by member) was most
// of the fold's cost per item. Keeps user_id and the fields the fold needs of every item; skips
// the rest (source, plan_id, occurred_at, used_after, metadata ...). Type errors stop the parse
// with `error` set.
class BatchEventReader
    : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, BatchEventReader> {
 public:
  explicit BatchEventReader(size_t items_hint) { items.reserve(items_hint); }

  std::string_view user_id;
  bool has_user = false;
  bool has_items = false;
  std::vector<BatchItemFields> items;
  std::string error;

  bool Null() { return Scalar(kNullValue, 0); }
  bool Bool(bool) { return Scalar(kOtherValue, 0); }
  bool Int(int v) { return Scalar(kIntValue, v); }
  bool Uint(unsigned v) { return Scalar(kIntValue, v); }
  bool Int64(int64_t v) { return Scalar(kIntValue, v); }
  bool Uint64(uint64_t) { return Scalar(kOtherValue, 0); }  // beyond int64
  bool Double(double) { return Scalar(kOtherValue, 0); }
  bool RawNumber(const char*, rapidjson::SizeType, bool) { return Scalar(kOtherValue, 0); }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    if (skipping_ > 0) return true;
    const std::string_view text(s, n);
    if (state_ == State::kRoot) {
      if (field_ == Field::kUserId) {
        user_id = text;
        has_user = true;
      } else if (field_ == Field::kItems) {
        return Fail("items is not an array");
      }
      return true;
    }
    if (state_ == State::kItem) {
      BatchItemFields& item = items.back();
      switch (field_) {
        case Field::kKey:
          return Set(&item, &item.key, BatchItemFields::kKey, text);
        case Field::kService:
          return Set(&item, &item.service, BatchItemFields::kService, text);
        case Field::kWindowStart:
          return Set(&item, &item.window_start, BatchItemFields::kWindowStart, text);
        case Field::kWindowEnd:
          return Set(&item, &item.window_end, BatchItemFields::kWindowEnd, text);
        case Field::kWindowKind:
          return Set(&item, &item.window_kind, BatchItemFields::kWindowKind, text);
        case Field::kCarryFrom:
          if (text.empty()) return Fail("carry_from is not a time");
          item.carry_from = text;
          return true;
        case Field::kWindowUncutEnd:
          if (text.empty()) return Fail("window_uncut_end is not a time");
          item.window_uncut_end = text;
          return true;
        case Field::kQuantity:
        case Field::kLimit:
          return Fail(FieldName() + " is not an integer");
        default:
          return true;
      }
    }
    return Scalar(kOtherValue, 0);
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    if (skipping_ > 0) return true;
    const std::string_view name(s, n);
    field_ = Field::kOther;
    if (state_ == State::kRoot) {
      if (name == "user_id") field_ = Field::kUserId;
      if (name == "items") field_ = Field::kItems;
    } else if (state_ == State::kItem) {
      if (name == "idempotency_key") {
        field_ = Field::kKey;
      } else if (name == "service") {
        field_ = Field::kService;
      } else if (name == "quantity") {
        field_ = Field::kQuantity;
      } else if (name == "window_start") {
        field_ = Field::kWindowStart;
      } else if (name == "window_end") {
        field_ = Field::kWindowEnd;
      } else if (name == "window_kind") {
        field_ = Field::kWindowKind;
      } else if (name == "limit") {
        field_ = Field::kLimit;
      } else if (name == "carry_from") {
        field_ = Field::kCarryFrom;
      } else if (name == "window_uncut_end") {
        field_ = Field::kWindowUncutEnd;
      }
    }
    return true;
  }
  bool StartObject() { return Start(/*object=*/true); }
  bool StartArray() { return Start(/*object=*/false); }
  bool EndObject(rapidjson::SizeType) {
    if (skipping_ > 0) {
      --skipping_;
    } else if (state_ == State::kItem) {
      state_ = State::kItems;
    } else if (state_ == State::kRoot) {
      state_ = State::kDone;
    }
    return true;
  }
  bool EndArray(rapidjson::SizeType) {
    if (skipping_ > 0) {
      --skipping_;
    } else if (state_ == State::kItems) {
      state_ = State::kRoot;
    }
    return true;
  }

 private:
  enum class State { kStart, kRoot, kItems, kItem, kDone };
  enum class Field {
    kOther,
    kUserId,
    kItems,
    kKey,
    kService,
    kQuantity,
    kWindowStart,
    kWindowEnd,
    kWindowKind,
    kLimit,
    kCarryFrom,
    kWindowUncutEnd
  };
  enum ValueKind { kNullValue, kIntValue, kOtherValue };

  std::string FieldName() const {
    switch (field_) {
      case Field::kUserId:
        return "user_id";
      case Field::kItems:
        return "items";
      case Field::kKey:
        return "idempotency_key";
      case Field::kService:
        return "service";
      case Field::kQuantity:
        return "quantity";
      case Field::kWindowStart:
        return "window_start";
      case Field::kWindowEnd:
        return "window_end";
      case Field::kWindowKind:
        return "window_kind";
      case Field::kLimit:
        return "limit";
      case Field::kCarryFrom:
        return "carry_from";
      case Field::kWindowUncutEnd:
        return "window_uncut_end";
      case Field::kOther:
        break;
    }
    return "a member";
  }
  bool Fail(std::string why) {
    error = std::move(why);
    return false;
  }
  bool Set(BatchItemFields* item, std::string_view* field, uint8_t bit, std::string_view text) {
    *field = text;
    item->seen |= bit;
    return true;
  }
  bool Scalar(ValueKind kind, int64_t value) {
    if (skipping_ > 0) return true;
    switch (state_) {
      case State::kStart:
        return Fail("data is not an object");
      case State::kRoot:
        if (field_ == Field::kUserId) return Fail("user_id is not a string");
        if (field_ == Field::kItems) return Fail("items is not an array");
        return true;
      case State::kItems:
        return Fail("item is not an object");
      case State::kItem: {
        BatchItemFields& item = items.back();
        if (field_ == Field::kQuantity) {
          if (kind != kIntValue) return Fail("quantity is not an integer");
          item.quantity = value;
          item.seen |= BatchItemFields::kQuantity;
        } else if (field_ == Field::kLimit) {
          if (kind == kOtherValue) return Fail("limit is not an integer or null");
          if (kind == kIntValue) {
            item.limit = value;
          } else {
            item.limit.reset();
          }
          item.seen |= BatchItemFields::kLimit;
        } else if (field_ != Field::kOther) {
          return Fail(FieldName() + " is not a string");
        }
        return true;
      }
      case State::kDone:
        return true;
    }
    return true;
  }
  bool Start(bool object) {
    if (skipping_ > 0) {
      ++skipping_;
      return true;
    }
    switch (state_) {
      case State::kStart:
        if (!object) return Fail("data is not an object");
        state_ = State::kRoot;
        return true;
      case State::kRoot:
        if (field_ == Field::kItems) {
          if (object) return Fail("items is not an array");
          state_ = State::kItems;
          has_items = true;
          return true;
        }
        if (field_ == Field::kUserId) return Fail("user_id is not a string");
        skipping_ = 1;
        return true;
      case State::kItems:
        if (!object) return Fail("item is not an object");
        items.emplace_back();
        state_ = State::kItem;
        return true;
      case State::kItem:
        if (field_ != Field::kOther) return Fail(FieldName() + " has the wrong type");
        skipping_ = 1;  // metadata, or anything else the fold does not read
        return true;
      case State::kDone:
        return true;
    }
    return true;
  }

  State state_ = State::kStart;
  Field field_ = Field::kOther;
  int skipping_ = 0;  // containers open inside a value that is skipped
};

// An item's window, parsed once per run of items that name the same three strings (a request's
// items mostly share one window, and RFC 3339 parsing would otherwise be a good part of an
// item's fold cost).
class ItemWindowReader {
 public:
  Status Read(const BatchItemFields& item, UsageWindow* out) {
    const std::string_view type = kUsageBatchRecordedV1;
    if (!valid_ || item.window_start != start_ || item.window_end != end_ ||
        item.window_kind != kind_) {
      valid_ = false;
      int64_t us = 0;
      if (!ParseRfc3339(item.window_start, &us)) {
        return Malformed(type, "window_start is not a time");
      }
      window_.start_s = FloorSeconds(us);
      if (!ParseRfc3339(item.window_end, &us)) return Malformed(type, "window_end is not a time");
      window_.end_s = FloorSeconds(us);
      if (!ParseWindowKind(item.window_kind, &window_.kind)) {
        return Malformed(type, "unknown window_kind");
      }
      if (window_.start_s < 0) return Malformed(type, "window_start before 1970");
      start_ = item.window_start;
      end_ = item.window_end;
      kind_ = item.window_kind;
      valid_ = true;
    }
    *out = window_;
    return Status::OK();
  }

 private:
  bool valid_ = false;
  std::string_view start_, end_, kind_;  // into the event's parsed data
  UsageWindow window_;
};

// usage.batch_recorded.v1: every item has exactly the effect its usage.recorded.v1 would have
// (ApplyRecorded), in item order; only the counter rows are read once and written once per
// window instead of once per item. Windows are distinct rows, so grouping the items by window
// changes nothing: within a window the items still apply in order (the last one's end, kind and
// limit win, as they would).
Status ApplyBatchRecorded(const Event& event, const StateReader& state, RowWriter* rows) {
  const std::string_view type = kUsageBatchRecordedV1;
  std::string text(event.data);  // parsed in situ: the reader's views point into it
  BatchEventReader data(event.data.size() / 192 + 1);  // an item is ~200+ bytes of data
  rapidjson::Reader reader;
  rapidjson::InsituStringStream stream(text.data());
  if (!reader.Parse<rapidjson::kParseInsituFlag>(stream, data)) {
    return Malformed(type, data.error.empty() ? std::string("data is not JSON") : data.error);
  }
  if (!data.has_user) return Malformed(type, "user_id missing");
  if (data.user_id.empty()) return Malformed(type, "user_id empty");
  if (!data.has_items || data.items.empty()) return Malformed(type, "items missing or empty");
  const std::string_view user_id = data.user_id;
  struct Touched {
    UsageWindow window;
    UsageCounter counter;
    CounterStored stored = CounterStored::kAbsent;
  };
  std::vector<Touched> touched;  // the windows the items fall in: one or a few
  size_t last = 0;               // index into `touched` of the previous item's window
  const int64_t at_s = FloorSeconds(event.time_us);  // when carries end (ApplyRecorded)
  ItemWindowReader windows;
  std::string dedupe_key = UsageDedupeKey(user_id, "");
  const size_t dedupe_prefix = dedupe_key.size();
  for (const BatchItemFields& item : data.items) {
    if (item.seen != BatchItemFields::kAll) {
      return Malformed(type, "an item lacks one of idempotency_key, service, quantity, "
                             "window_start, window_end, window_kind, limit");
    }
    if (item.quantity <= 0) return Malformed(type, "quantity must be positive");
    UsageWindow window;
    LEDGER_RETURN_IF_ERROR(windows.Read(item, &window));
    int64_t uncut_end = 0;  // as ApplyRecorded reads it; present only when cut (rare)
    if (!item.window_uncut_end.empty()) {
      int64_t us = 0;
      if (!ParseRfc3339(item.window_uncut_end, &us)) {
        return Malformed(type, "window_uncut_end is not a time");
      }
      uncut_end = FloorSeconds(us);
      if (uncut_end <= window.end_s) {
        return Malformed(type, "window_uncut_end must be after window_end");
      }
    }
    if (touched.empty() || !SameCounter(touched[last].window, window)) {
      last = touched.size();
      for (size_t i = 0; i < touched.size(); ++i) {
        if (SameCounter(touched[i].window, window)) last = i;
      }
      if (last == touched.size()) {
        touched.emplace_back();
        Touched& t = touched[last];
        LEDGER_RETURN_IF_ERROR(LoadStoredCounter(state, user_id, window, &t.counter, &t.stored));
        t.counter.EndCarryAt(at_s);
        // The decider names the carry on the item that opened the window (its first), as
        // usage.recorded.v1 does; items without it carry nothing (ApplyCarryFrom).
        if (!item.carry_from.empty() && t.stored == CounterStored::kAbsent) {
          int64_t us = 0;
          if (!ParseRfc3339(item.carry_from, &us)) {
            return Malformed(type, "carry_from is not a time");
          }
          LEDGER_RETURN_IF_ERROR(ApplyCarryFrom(state, user_id, type, window, FloorSeconds(us),
                                                at_s, &t.counter));
        }
      }
    }
    Touched& t = touched[last];
    t.window = window;
    UsageCounter& counter = t.counter;
    counter.window_end_s = window.end_s;
    counter.uncut_end_s = uncut_end;
    counter.kind = window.kind;
    counter.used += item.quantity;
    counter.recorded += item.quantity;
    counter.limit = item.limit;
    auto it = counter.services.find(item.service);
    if (it == counter.services.end()) {
      counter.services.emplace(std::string(item.service), item.quantity);
    } else {
      it->second += item.quantity;
    }
    dedupe_key.resize(dedupe_prefix);
    dedupe_key.append(item.key);
    LEDGER_RETURN_IF_ERROR(rows->Put(
        kUsageFamily, dedupe_key,
        EncodeUsageKeyRecord(event.position.value(), item.service, item.quantity)));
  }
  for (const Touched& t : touched) {
    LEDGER_RETURN_IF_ERROR(StoreCounter(user_id, t.window, t.stored, t.counter, rows));
  }
  return Status::OK();
}

Status ApplyThreshold(const Event& event, const rapidjson::Value& data, const StateReader& state,
                      RowWriter* rows) {
  const std::string_view type = kUsageThresholdReachedV1;
  EventWindow w;
  LEDGER_RETURN_IF_ERROR(ReadEventWindow(data, type, &w));
  int64_t percent = 0, limit = 0;
  LEDGER_RETURN_IF_ERROR(ReadInt(data, "threshold_percent", type, &percent));
  LEDGER_RETURN_IF_ERROR(ReadInt(data, "limit", type, &limit));
  if (percent != 80 && percent != 100) return Malformed(type, "threshold_percent");
  UsageCounter counter;
  CounterStored stored = CounterStored::kAbsent;
  LEDGER_RETURN_IF_ERROR(LoadStoredCounter(state, w.user_id, w.window, &counter, &stored));
  counter.EndCarryAt(FloorSeconds(event.time_us));
  counter.Announce(limit, percent == 80 ? kThreshold80 : kThreshold100);
  return StoreCounter(w.user_id, w.window, stored, counter, rows);
}

Status ApplyReset(const rapidjson::Value& data, const StateReader& state, RowWriter* rows) {
  const std::string_view type = kUsageWindowResetV1;
  EventWindow w;
  LEDGER_RETURN_IF_ERROR(ReadEventWindow(data, type, &w));
  int64_t used_before = 0;
  LEDGER_RETURN_IF_ERROR(ReadInt(data, "used_before", type, &used_before));
  UsageCounter counter;
  CounterStored stored = CounterStored::kAbsent;
  LEDGER_RETURN_IF_ERROR(LoadStoredCounter(state, w.user_id, w.window, &counter, &stored));
  // A window with no counter that counted nothing (used_before, decided as LoadCounter previews
  // it) has nothing to reset: no row. The zero counter it wrote made a window out of nothing --
  // POST .../u-typo/reset-usage (any valid id names an account) added a window and a user to
  // usage-stats, a by_plan "none" entry and u-typo in top_users with 0 calls, for good. A window
  // not written yet that a restarted period would carry calls into (used_before > 0) does get
  // its zero counter: that is what gives the carried calls back (a fresh window with a counter
  // carries nothing).
  if (stored == CounterStored::kAbsent && used_before == 0) return Status::OK();
  counter.used = 0;
  counter.services.clear();
  counter.announced.clear();
  counter.carried.clear();
  counter.resets += 1;
  return StoreCounter(w.user_id, w.window, stored, counter, rows);
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// ---- deciding ------------------------------------------------------------------------------------

// ceil(limit × percent / 100), at least 1.
int64_t ThresholdCalls(int64_t limit, int percent) {
  return std::max<int64_t>(1, (limit * percent + 99) / 100);
}

struct RecordFields {
  std::string_view user_id;
  std::string_view service;
  int64_t quantity = 0;
  std::string_view source;
  std::string_view idempotency_key;
  int64_t occurred_at_us = 0;
  UsageWindow window;
  const WindowText* window_text = nullptr;  // of `window`
  std::optional<int64_t> uncut_end_s;       // UsageTerms::uncut_end_s: window_uncut_end
  const Plan* plan = nullptr;
  std::string_view subscription_id;
  std::optional<int64_t> limit;
  int64_t used_after = 0;
  // The start of the window a restarted period carried from, when the decider opened `window`
  // with a carry (LoadCounter); -1: none, and no carry_from in the event.
  int64_t carry_from_s = -1;
  std::string_view metadata_json;
};

NewEvent RecordedEvent(const RecordFields& f) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  json::Key(&w, "user_id");
  json::String(&w, f.user_id);
  json::Key(&w, "service");
  json::String(&w, f.service);
  json::Key(&w, "quantity");
  w.Int64(f.quantity);
  json::Key(&w, "source");
  json::String(&w, f.source);
  json::Key(&w, "idempotency_key");
  json::String(&w, f.idempotency_key);
  json::Key(&w, "occurred_at");
  json::String(&w, FormatRfc3339Micros(f.occurred_at_us));
  WriteWindowStrings(&w, *f.window_text);
  if (f.uncut_end_s) {
    json::Key(&w, "window_uncut_end");
    TimeSeconds(&w, *f.uncut_end_s);
  }
  if (f.carry_from_s >= 0) {
    json::Key(&w, "carry_from");
    TimeSeconds(&w, f.carry_from_s);
  }
  json::Key(&w, "plan_id");
  if (f.plan != nullptr) {
    json::String(&w, f.plan->id);
  } else {
    w.Null();
  }
  json::Key(&w, "subscription_id");
  json::NonEmptyOrNull(&w, f.subscription_id);
  json::Key(&w, "limit");
  json::OptInt(&w, f.limit);
  json::Key(&w, "used_after");
  w.Int64(f.used_after);
  if (!f.metadata_json.empty()) {
    json::Key(&w, "metadata");
    w.RawValue(f.metadata_json.data(), f.metadata_json.size(), rapidjson::kObjectType);
  }
  w.EndObject();
  return NewEvent{std::string(kUsageRecordedV1), std::string(f.user_id), json::Text(buf)};
}

// Appends the threshold events `used_after` reaches in `counter`'s window (for `limit`) that
// were not announced for that limit yet, and marks them in `counter` the way the fold will
// (UsageCounter::Announce, event by event).
size_t AppendThresholdEvents(const RecordFields& f, UsageCounter* counter,
                             std::vector<NewEvent>* events) {
  if (!f.limit) return 0;
  const int64_t limit = *f.limit;
  size_t appended = 0;
  for (int percent : {80, 100}) {
    const uint8_t bit = percent == 80 ? kThreshold80 : kThreshold100;
    const bool announced = (counter->AnnouncedFor(limit) & bit) != 0;
    if (announced || f.used_after < ThresholdCalls(limit, percent)) continue;
    counter->Announce(limit, bit);
    rapidjson::StringBuffer buf;
    JsonWriter w(buf);
    w.StartObject();
    json::Key(&w, "user_id");
    json::String(&w, f.user_id);
    json::Key(&w, "threshold_percent");
    w.Int(percent);
    WriteWindowStrings(&w, *f.window_text);
    json::Key(&w, "plan_id");
    if (f.plan != nullptr) {
      json::String(&w, f.plan->id);
    } else {
      w.Null();
    }
    json::Key(&w, "limit");
    w.Int64(limit);
    json::Key(&w, "used");
    w.Int64(f.used_after);
    json::Key(&w, "service");
    json::String(&w, f.service);
    json::Key(&w, "idempotency_key");
    json::String(&w, f.idempotency_key);
    w.EndObject();
    events->push_back(
        NewEvent{std::string(kUsageThresholdReachedV1), std::string(f.user_id), json::Text(buf)});
    ++appended;
  }
  return appended;
}

// The 200 answer of an admitted consume (stored with its idempotency record).
std::string AdmittedAnswer(const RecordFields& f, const std::optional<int64_t>& remaining) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  json::Key(&w, "allowed");
  w.Bool(true);
  json::Key(&w, "user_id");
  json::String(&w, f.user_id);
  json::Key(&w, "service");
  json::String(&w, f.service);
  json::Key(&w, "quantity");
  w.Int64(f.quantity);
  json::Key(&w, "used");
  w.Int64(f.used_after);
  json::Key(&w, "limit");
  json::OptInt(&w, f.limit);
  json::Key(&w, "remaining");
  json::OptInt(&w, remaining);
  WriteWindowStrings(&w, *f.window_text);
  json::Key(&w, "plan_id");
  json::String(&w, f.plan->id);
  w.EndObject();
  return json::Text(buf);
}

Status PaymentRequired(std::string problem, std::string message) {
  return Status::Make(Code::kPaymentRequired, std::move(problem), std::move(message));
}

// ComputeUsageTerms for `access`: with Stripe's subscription, except for a trial tier set by an
// admin's override, whose Stripe dates (none, or an older subscription's) say nothing about it:
// that trial runs the plan's trial days from when the admin set the tier. `judge_payment` false:
// the terms as they are once the latest invoice is paid (no payment_failed refusal) -- the window
// a past-due subscription's calls were counted in, and count again in when it is paid.
Status SubjectUsageTerms(const UserAccess& access, int64_t at_s, UsageTerms* out,
                         bool judge_payment = true) {
  const Plan* plan = access.plan ? &*access.plan : nullptr;
  // A subscription canceled at its period's end (or at a date) grants nothing past it, whatever
  // its row says until Stripe's deletion arrives (ScheduledEnd): months went on from the period's
  // end with a fresh quota.
  if (access.EndedAt(at_s)) {
    ComputeUsageTerms(nullptr, nullptr, at_s, out).IgnoreError();
    return PaymentRequired("subscription_required",
                           "the subscription ended at " +
                               FormatRfc3339Seconds(*access.scheduled_end()) +
                               " (it was canceled); subscribe to a plan to continue");
  }
  // Past due with no retry left (UserAccess::PaymentAbandoned): Stripe left the subscription
  // past-due after its last retry failed, and the grace period went on for good. A trial's end
  // (trial_expired) is the earlier and more specific refusal, so it is judged first (below).
  const bool payment_abandoned = judge_payment && access.PaymentAbandoned();
  Status s;
  if (access.overridden() && access.override->plan_id && access.plan &&
      IsTrialPlan(*access.plan)) {
    SubscriptionRecord granted;
    granted.trial_start = FloorSeconds(access.override->tier_set_at_us);
    s = ComputeUsageTerms(plan, &granted, at_s, out);
  } else {
    s = ComputeUsageTerms(plan,
                          access.subscription.has_subscription
                              ? &access.subscription.subscription
                              : nullptr,
                          at_s, out);
  }
  // Nothing is granted past a scheduled end, so the window ends there: Stripe's period went on
  // to its end, and a user over quota with cancel_at in 2 days of a 20-day period was told
  // Retry-After ≈ 20 days (X-RateLimit-Reset and window_end likewise) though from cancel_at
  // every call is 402. (The counter's window is its start and kind; the end is the last
  // record's.)
  if (s.ok() && payment_abandoned) {
    ComputeUsageTerms(nullptr, nullptr, at_s, out).IgnoreError();
    return PaymentRequired("payment_failed",
                           "the subscription is past due and Stripe will not retry its latest "
                           "invoice; pay it or update the payment method in the customer "
                           "portal (/api/v1/billing/portal/create) to continue");
  }
  const std::optional<int64_t> end = access.scheduled_end();
  if (end && out->window.end_s > *end) {
    out->uncut_end_s = out->window.end_s;
    out->window.end_s = *end;
  }
  return s;
}

// The terms for recording (batch): the plan's window when the user has a plan that grants
// access and the trial (if any) has not ended; otherwise the calendar month without a limit.
// `*plan` is the user's plan (null: none) either way.
void RecordingTerms(const MeteringSubject& subject, int64_t at_s, UsageTerms* terms,
                    const Plan** plan) {
  *plan = nullptr;
  if (subject.access.access != AccessLevel::kNone && subject.plan() != nullptr) {
    if (SubjectUsageTerms(subject.access, at_s, terms).ok()) {
      *plan = subject.plan();
      return;
    }
  }
  ComputeUsageTerms(nullptr, nullptr, at_s, terms).IgnoreError();
  if (subject.plan() != nullptr) *plan = subject.plan();
  terms->limit.reset();
}

std::string_view SubscriptionIdOf(const MeteringSubject& subject) {
  const SubscriptionRecord* sub = subject.subscription();
  return sub != nullptr ? std::string_view(sub->subscription_id) : std::string_view();
}

}  // namespace

// ---- time ----------------------------------------------------------------------------------------

int64_t UtcDayStart(int64_t t_s) { return FloorDiv(t_s, kSecondsPerDay) * kSecondsPerDay; }

int64_t UtcMonthStart(int64_t t_s) {
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(FloorDiv(t_s, kSecondsPerDay), &y, &m, &d);
  return DaysFromCivil(y, m, 1) * kSecondsPerDay;
}

int64_t AddUtcMonths(int64_t t_s, int64_t months) {
  const int64_t days = FloorDiv(t_s, kSecondsPerDay);
  const int64_t second_of_day = t_s - days * kSecondsPerDay;
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(days, &y, &m, &d);
  int64_t month_index = y * 12 + (m - 1) + months;
  int64_t ny = FloorDiv(month_index, 12);
  unsigned nm = static_cast<unsigned>(month_index - ny * 12) + 1;
  unsigned nd = std::min(d, DaysInMonth(ny, nm));
  return DaysFromCivil(ny, nm, nd) * kSecondsPerDay + second_of_day;
}

namespace {

// "YYYY-MM-DDTHH:MM:SS" into buf[0..19) (years 0..9999), without snprintf: the usage deciders
// format several times per event on the writer thread.
void FormatCivilSeconds(int64_t t_s, char* buf) {
  const int64_t days = FloorDiv(t_s, kSecondsPerDay);
  const int64_t sod = t_s - days * kSecondsPerDay;
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(days, &y, &m, &d);
  y = std::clamp<int64_t>(y, 0, 9999);
  auto two = [](char* p, unsigned v) {
    p[0] = static_cast<char>('0' + v / 10);
    p[1] = static_cast<char>('0' + v % 10);
  };
  two(buf, static_cast<unsigned>(y / 100));
  two(buf + 2, static_cast<unsigned>(y % 100));
  buf[4] = '-';
  two(buf + 5, m);
  buf[7] = '-';
  two(buf + 8, d);
  buf[10] = 'T';
  two(buf + 11, static_cast<unsigned>(sod / 3600));
  buf[13] = ':';
  two(buf + 14, static_cast<unsigned>(sod / 60 % 60));
  buf[16] = ':';
  two(buf + 17, static_cast<unsigned>(sod % 60));
}

}  // namespace

std::string FormatRfc3339Seconds(int64_t t_s) {
  char buf[20];
  FormatCivilSeconds(t_s, buf);
  buf[19] = 'Z';
  return std::string(buf, 20);
}

std::string FormatRfc3339Micros(int64_t t_us) {
  const int64_t t_s = FloorDiv(t_us, kMicrosPerSecond);
  int64_t micros = t_us - t_s * kMicrosPerSecond;
  char buf[27];
  FormatCivilSeconds(t_s, buf);
  buf[19] = '.';
  for (int i = 25; i >= 20; --i) {
    buf[i] = static_cast<char>('0' + micros % 10);
    micros /= 10;
  }
  buf[26] = 'Z';
  return std::string(buf, 27);
}

bool ParseRfc3339(std::string_view s, int64_t* out_us) {
  auto digits = [&](size_t pos, size_t n, int64_t* v) {
    if (pos + n > s.size()) return false;
    int64_t r = 0;
    for (size_t i = pos; i < pos + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      r = r * 10 + (s[i] - '0');
    }
    *v = r;
    return true;
  };
  int64_t y, mo, d, h, mi, sec;
  if (!digits(0, 4, &y) || s.size() < 20 || s[4] != '-' || !digits(5, 2, &mo) || s[7] != '-' ||
      !digits(8, 2, &d) || (s[10] != 'T' && s[10] != 't') || !digits(11, 2, &h) || s[13] != ':' ||
      !digits(14, 2, &mi) || s[16] != ':' || !digits(17, 2, &sec)) {
    return false;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > DaysInMonth(y, static_cast<unsigned>(mo)) || h > 23 ||
      mi > 59 || sec > 60) {
    return false;
  }
  size_t pos = 19;
  int64_t micros = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    size_t start = pos;
    int64_t scale = 100000;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      micros += (s[pos] - '0') * scale;
      scale /= 10;
      ++pos;
    }
    if (pos == start || pos - start > 9) return false;
  }
  int64_t offset_s = 0;
  if (pos < s.size() && (s[pos] == 'Z' || s[pos] == 'z')) {
    ++pos;
  } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
    int64_t oh, om;
    if (!digits(pos + 1, 2, &oh) || pos + 3 >= s.size() || s[pos + 3] != ':' ||
        !digits(pos + 4, 2, &om) || oh > 23 || om > 59) {
      return false;
    }
    offset_s = (oh * 3600 + om * 60) * (s[pos] == '+' ? 1 : -1);
    pos += 6;
  } else {
    return false;
  }
  if (pos != s.size()) return false;
  const int64_t t_s = DaysFromCivil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) *
                          kSecondsPerDay +
                      h * 3600 + mi * 60 + std::min<int64_t>(sec, 59) - offset_s;
  if (t_s < 0) return false;
  *out_us = t_s * kMicrosPerSecond + micros;
  return true;
}

// ---- windows -------------------------------------------------------------------------------------

std::string_view WindowKindName(WindowKind kind) {
  switch (kind) {
    case WindowKind::kTrialDay:
      return "trial_day";
    case WindowKind::kDay:
      return "day";
    case WindowKind::kBillingMonth:
      return "billing_month";
    case WindowKind::kCalendarMonth:
      return "calendar_month";
  }
  return "calendar_month";
}

bool ParseWindowKind(std::string_view name, WindowKind* out) {
  for (WindowKind kind : {WindowKind::kTrialDay, WindowKind::kDay, WindowKind::kBillingMonth,
                          WindowKind::kCalendarMonth}) {
    if (WindowKindName(kind) == name) {
      *out = kind;
      return true;
    }
  }
  return false;
}

bool IsTrialPlan(const Plan& plan) { return plan.trial_days > 0; }

namespace {

UsageWindow CalendarMonth(int64_t at_s) {
  const int64_t start = UtcMonthStart(at_s);
  return UsageWindow{start, AddUtcMonths(start, 1), WindowKind::kCalendarMonth};
}

// The month [anchor + k months, anchor + k+1 months) containing at_s, its end clipped to `clip`
// (0 = none).
UsageWindow MonthFromAnchor(int64_t anchor_s, int64_t at_s, int64_t clip_s) {
  int64_t ay = 0, ty = 0;
  unsigned am = 0, ad = 0, tm = 0, td = 0;
  CivilFromDays(FloorDiv(anchor_s, kSecondsPerDay), &ay, &am, &ad);
  CivilFromDays(FloorDiv(at_s, kSecondsPerDay), &ty, &tm, &td);
  int64_t k = (ty - ay) * 12 + (static_cast<int64_t>(tm) - static_cast<int64_t>(am));
  while (AddUtcMonths(anchor_s, k) > at_s) --k;
  while (AddUtcMonths(anchor_s, k + 1) <= at_s) ++k;
  UsageWindow window{AddUtcMonths(anchor_s, k), AddUtcMonths(anchor_s, k + 1),
                     WindowKind::kBillingMonth};
  if (clip_s > 0 && window.end_s > clip_s && window.start_s < clip_s) window.end_s = clip_s;
  return window;
}

unsigned DayOfMonth(int64_t t_s) {
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(FloorDiv(t_s, kSecondsPerDay), &y, &m, &d);
  return d;
}

// The billing anchor of a period of one month (Stripe's billing_cycle_anchor is not stored): of
// its start and end, the one on the later day of the month. Stripe clamps an anchor on the
// 29th-31st to a shorter month's last day, and of two consecutive months one has 31 days, so at
// most one of the two is clamped: [Jan 31, Feb 28) -> Jan 31, [Feb 28, Mar 31) -> Mar 31,
// [Jan 30, Feb 28) -> Jan 30. Nullopt for a period not one month from that anchor (an interval
// of weeks or days, a prorated first period).
std::optional<int64_t> MonthlyPeriodAnchor(int64_t start_s, int64_t end_s) {
  if (DayOfMonth(start_s) > DayOfMonth(end_s)) {
    if (AddUtcMonths(start_s, 1) == end_s) return start_s;
  } else if (AddUtcMonths(end_s, -1) == start_s) {
    return end_s;
  }
  return std::nullopt;
}

UsageWindow BillingMonth(const SubscriptionRecord* sub, int64_t at_s) {
  if (sub == nullptr || !sub->current_period_start || !sub->current_period_end ||
      *sub->current_period_end <= *sub->current_period_start || *sub->current_period_start < 0) {
    return CalendarMonth(at_s);
  }
  const int64_t start = *sub->current_period_start;
  const int64_t end = *sub->current_period_end;
  if (at_s >= start && at_s < end) {
    if (end - start <= kBillingPeriodOneWindowMaxSeconds) {
      return UsageWindow{start, end, WindowKind::kBillingMonth};
    }
    return MonthFromAnchor(start, at_s, end);
  }
  // After the period (renewal not seen yet), the months its renewals bring; before it (a batch
  // item from an earlier period), Stripe's earlier periods. A period of one month: months of its
  // billing anchor ([Jan 31, Feb 28) renews as [Feb 28, Mar 31), not Mar 28). Any other: months
  // on from its end (a longer period's renewal starts there and is cut into months from that
  // start), back from its start.
  if (const std::optional<int64_t> anchor = MonthlyPeriodAnchor(start, end)) {
    return MonthFromAnchor(*anchor, at_s, 0);
  }
  return MonthFromAnchor(at_s >= end ? end : start, at_s, 0);
}

std::optional<int64_t> TrialStart(const SubscriptionRecord* sub) {
  if (sub == nullptr) return std::nullopt;
  if (sub->trial_start) return sub->trial_start;
  if (sub->created) return sub->created;
  return sub->current_period_start;
}

}  // namespace

Status ComputeUsageTerms(const Plan* plan, const SubscriptionRecord* subscription, int64_t at_s,
                         UsageTerms* out) {
  *out = UsageTerms();
  if (plan == nullptr) {
    out->window = CalendarMonth(at_s);
    return Status::OK();
  }
  out->limit = plan->api_calls_limit;
  const int64_t day = UtcDayStart(at_s);
  if (IsTrialPlan(*plan)) {
    out->window = UsageWindow{day, day + kSecondsPerDay, WindowKind::kTrialDay};
    std::optional<int64_t> start = TrialStart(subscription);
    if (!start) return Status::OK();  // no anchor known: plain UTC days
    // Stripe's trial_end, when known, is the trial the customer paid for: an admin's later edit
    // of the plan's trial_days neither cuts a running trial short nor stretches it.
    int64_t end = *start + plan->trial_days * kSecondsPerDay;
    if (subscription->trial_end && *subscription->trial_end > *start) {
      end = std::min(*subscription->trial_end, *start + limits::kTrialDaysMax * kSecondsPerDay);
    }
    out->trial = UsageWindow{*start, end, WindowKind::kTrialDay};
    const int64_t days = (end - *start + kSecondsPerDay - 1) / kSecondsPerDay;  // <= kTrialDaysMax
    if (plan->api_calls_limit) out->trial_limit = *plan->api_calls_limit * days;
    if (at_s >= end) {
      return PaymentRequired("trial_expired",
                             "the trial ended at " + FormatRfc3339Seconds(end) +
                                 "; subscribe to a paid plan to continue");
    }
    if (at_s >= *start) out->window.start_s = std::max(day, *start);
    out->window.end_s = std::min(out->window.end_s, end);
    return Status::OK();
  }
  if (plan->limit_window == LimitWindow::kDay) {
    out->window = UsageWindow{day, day + kSecondsPerDay, WindowKind::kDay};
    return Status::OK();
  }
  out->window = BillingMonth(subscription, at_s);
  return Status::OK();
}

Status ResolveConsumeTerms(const MeteringSubject& subject, int64_t now_s, UsageTerms* out) {
  return ResolveAccessTerms(subject.access, now_s, out);
}

Status ResolveAccessTerms(const UserAccess& access, int64_t now_s, UsageTerms* out) {
  if (!access.status) {
    return PaymentRequired("subscription_required", "no subscription: subscribe to a plan");
  }
  if (access.access == AccessLevel::kNone || !access.plan) {
    return PaymentRequired("subscription_required",
                           "the subscription (" + std::string(access.status_name()) +
                               ") grants no access");
  }
  return SubjectUsageTerms(access, now_s, out);
}

std::string AccessRefusalAt(const UserAccess& access, int64_t now_s) {
  UsageTerms terms;
  Status s = ResolveAccessTerms(access, now_s, &terms);
  // ResolveAccessTerms answers nothing but 402s (it reads no row); any other error would be a
  // refusal too.
  if (s.ok()) return "";
  return s.code() == Code::kPaymentRequired ? s.problem() : std::string("subscription_required");
}

// ---- rows ----------------------------------------------------------------------------------------

std::string UsageCounterKey(std::string_view user_id, int64_t window_start_s, WindowKind kind) {
  std::string key = CounterPrefix(user_id);
  PutFixed64BE(&key, static_cast<uint64_t>(window_start_s));
  key.push_back(static_cast<char>(kind));
  return key;
}

std::string UsageDedupeKey(std::string_view user_id, std::string_view idempotency_key) {
  std::string key(kDedupePrefix);
  key.append(user_id);
  key.push_back('\0');
  key.append(idempotency_key);
  return key;
}

std::string EncodeUsageKeyRecord(uint64_t position, std::string_view service, int64_t quantity) {
  std::string v;
  v.reserve(16 + service.size());
  PutFixed64BE(&v, position);
  PutFixed64BE(&v, static_cast<uint64_t>(quantity));
  v.append(service);
  return v;
}

Status DecodeUsageKeyRecord(std::string_view value, UsageKeyRecord* out) {
  *out = UsageKeyRecord();
  if (value.size() < 8) return Status::Corruption("usage: dedupe row shorter than a position");
  out->position = DecodeFixed64BE(value.data());
  if (value.size() == 8) return Status::OK();  // fold version 6: the position only
  if (value.size() < 16) return Status::Corruption("usage: dedupe row truncated");
  out->has_item = true;
  out->quantity = static_cast<int64_t>(DecodeFixed64BE(value.data() + 8));
  out->service.assign(value.substr(16));
  return Status::OK();
}

uint8_t UsageCounter::AnnouncedFor(int64_t for_limit) const {
  for (const AnnouncedThresholds& a : announced) {
    if (a.limit == for_limit) return a.bits;
  }
  return 0;
}

void UsageCounter::Announce(int64_t for_limit, uint8_t bits) {
  uint8_t had = 0;
  for (auto it = announced.begin(); it != announced.end(); ++it) {
    if (it->limit == for_limit) {
      had = it->bits;
      announced.erase(it);
      break;
    }
  }
  announced.push_back(AnnouncedThresholds{for_limit, static_cast<uint8_t>(had | bits)});
  if (announced.size() > kUsageAnnouncedLimitsMax) announced.erase(announced.begin());
}

int64_t UsageCounter::CarriedCalls() const {
  int64_t calls = 0;
  for (const UsageCarry& part : carried) calls += part.calls;
  return calls;
}

void UsageCounter::EndCarryAt(int64_t at_s) {
  const size_t parts = carried.size();
  for (auto part = carried.begin(); part != carried.end();) {
    if (part->until_s <= 0 || at_s < part->until_s) {
      ++part;
      continue;
    }
    used = std::max<int64_t>(0, used - part->calls);
    for (const auto& [service, count] : part->services) {
      auto it = services.find(service);
      if (it == services.end()) continue;
      it->second -= count;
      if (it->second <= 0) services.erase(it);
    }
    part = carried.erase(part);
  }
  if (carried.size() == parts) return;
  // A threshold the calls left no longer reach is announced again when they reach it.
  for (auto it = announced.begin(); it != announced.end();) {
    uint8_t reached = 0;
    if (used >= ThresholdCalls(it->limit, 80)) reached |= kThreshold80;
    if (used >= ThresholdCalls(it->limit, 100)) reached |= kThreshold100;
    it->bits &= reached;
    it = it->bits == 0 ? announced.erase(it) : it + 1;
  }
}

std::string EncodeUsageCounter(const UsageCounter& c) {
  std::string v;
  v.reserve(64 + c.announced.size() * 9 + c.services.size() * 24);
  const bool carried = !c.carried.empty();
  const bool cut = c.uncut_end_s != 0;
  v.push_back(static_cast<char>(cut       ? kCounterFormatVersionUncutEnd
                                : carried ? kCounterFormatVersionCarries
                                          : kCounterFormatVersion));
  PutI64(&v, c.window_end_s);
  v.push_back(static_cast<char>(c.kind));
  PutI64(&v, c.used);
  v.push_back(c.limit ? 1 : 0);
  PutI64(&v, c.limit.value_or(0));
  v.push_back(static_cast<char>(c.announced.size()));
  for (const AnnouncedThresholds& a : c.announced) {
    PutI64(&v, a.limit);
    v.push_back(static_cast<char>(a.bits));
  }
  PutI64(&v, c.resets);
  PutI64(&v, c.recorded);
  PutFixed32BE(&v, static_cast<uint32_t>(c.services.size()));
  for (const auto& [service, count] : c.services) {
    PutLengthPrefixed(&v, service);
    PutI64(&v, count);
  }
  if (carried || cut) {
    PutFixed32BE(&v, static_cast<uint32_t>(c.carried.size()));
    for (const UsageCarry& part : c.carried) {
      PutI64(&v, part.calls);
      PutFixed32BE(&v, static_cast<uint32_t>(part.services.size()));
      for (const auto& [service, count] : part.services) {
        PutLengthPrefixed(&v, service);
        PutI64(&v, count);
      }
      PutI64(&v, part.until_s);
    }
  }
  if (cut) PutI64(&v, c.uncut_end_s);
  return v;
}

Status DecodeUsageCounter(std::string_view in, UsageCounter* out) {
  *out = UsageCounter();
  const auto malformed = [] { return Status::Corruption("malformed usage counter row"); };
  constexpr uint8_t kAllThresholds = kThreshold80 | kThreshold100;
  uint8_t version = 0, kind = 0, has_limit = 0;
  int64_t limit = 0;
  if (!GetU8(&in, &version) ||
      (version != kCounterFormatVersionUncutEnd && version != kCounterFormatVersionCarries &&
       version != kCounterFormatVersionCarriedUntil &&
       version != kCounterFormatVersionCarried && version != kCounterFormatVersion &&
       version != kCounterFormatVersionOneLimit) ||
      !GetI64(&in, &out->window_end_s) || !GetU8(&in, &kind) ||
      kind > static_cast<uint8_t>(WindowKind::kCalendarMonth) || !GetI64(&in, &out->used) ||
      !GetU8(&in, &has_limit) || !GetI64(&in, &limit)) {
    return malformed();
  }
  if (version == kCounterFormatVersionOneLimit) {
    // A row written before announcements were kept per limit: those of its last limit.
    uint8_t bits = 0;
    int64_t bits_limit = 0;
    if (!GetU8(&in, &bits) || (bits & ~kAllThresholds) != 0 || !GetI64(&in, &bits_limit)) {
      return malformed();
    }
    if (bits != 0) out->announced.push_back(AnnouncedThresholds{bits_limit, bits});
  } else {
    uint8_t count = 0;
    if (!GetU8(&in, &count) || count > kUsageAnnouncedLimitsMax) return malformed();
    for (uint8_t i = 0; i < count; ++i) {
      AnnouncedThresholds a;
      if (!GetI64(&in, &a.limit) || !GetU8(&in, &a.bits) || a.bits == 0 ||
          (a.bits & ~kAllThresholds) != 0) {
        return malformed();
      }
      out->announced.push_back(a);
    }
  }
  if (!GetI64(&in, &out->resets) || !GetI64(&in, &out->recorded) || in.size() < 4) {
    return malformed();
  }
  out->kind = static_cast<WindowKind>(kind);
  if (has_limit != 0) out->limit = limit;
  const auto read_services = [&](std::map<std::string, int64_t, std::less<>>* services) {
    if (in.size() < 4) return false;
    const uint32_t n = DecodeFixed32BE(in.data());
    in.remove_prefix(4);
    for (uint32_t i = 0; i < n; ++i) {
      std::string_view service;
      int64_t count = 0;
      if (!GetLengthPrefixed(&in, &service) || !GetI64(&in, &count)) return false;
      services->emplace(std::string(service), count);
    }
    return true;
  };
  if (!read_services(&out->services)) return malformed();
  const auto read_carry = [&](bool with_end) {
    UsageCarry part;
    if (!GetI64(&in, &part.calls) || !read_services(&part.services) ||
        (with_end && !GetI64(&in, &part.until_s))) {
      return false;
    }
    out->carried.push_back(std::move(part));
    return true;
  };
  if (version == kCounterFormatVersionCarries || version == kCounterFormatVersionUncutEnd) {
    if (in.size() < 4) return malformed();
    const uint32_t parts = DecodeFixed32BE(in.data());
    in.remove_prefix(4);
    // Format 5 is written only with a part; 6 for the uncut end, with or without.
    if (parts == 0 && version == kCounterFormatVersionCarries) return malformed();
    for (uint32_t i = 0; i < parts; ++i) {
      if (!read_carry(true)) return malformed();
    }
    if (version == kCounterFormatVersionUncutEnd &&
        (!GetI64(&in, &out->uncut_end_s) || out->uncut_end_s <= 0)) {
      return malformed();
    }
  } else if (version == kCounterFormatVersionCarriedUntil ||
             version == kCounterFormatVersionCarried) {
    if (!read_carry(version == kCounterFormatVersionCarriedUntil)) return malformed();
  }
  if (!in.empty()) return Status::Corruption("malformed usage counter row");
  return Status::OK();
}

Status GetUsageCounter(const StateReader& state, std::string_view user_id, int64_t window_start_s,
                       WindowKind kind, UsageCounter* out) {
  CounterStored stored = CounterStored::kAbsent;
  return ReadCounter(state, user_id, window_start_s, kind, out, &stored);
}

namespace {

// The window start of a counter key after the user's prefix: 8 bytes, then the kind (a row
// written before the kind was keyed has none; its row names it).
bool CounterKeyStart(std::string_view key, size_t prefix_size, int64_t* start_s) {
  const size_t rest = key.size() - prefix_size;
  if (rest != 8 && rest != 9) return false;
  *start_s = static_cast<int64_t>(DecodeFixed64BE(key.data() + prefix_size));
  return true;
}

}  // namespace

Status ListUserUsage(const StateReader& state, std::string_view user_id, size_t limit,
                     std::vector<UsageWindowRow>* out) {
  out->clear();
  if (limit == 0) return Status::OK();
  // The newest `limit` rows, kept raw in a ring as the scan passes them and decoded after it:
  // a user's history holds a window per day or month since the first call (and held one per
  // back-dated batch day since 2000), while GET /usage/summary shows the newest 100. Decoding
  // every row into the vector first (per-service maps and all) made each summary of a user with
  // ~9,600 back-dated windows decode 9,600 counters to return 100.
  struct RawRow {
    int64_t start = 0;
    std::string value;
  };
  std::vector<RawRow> ring;
  size_t seen = 0;  // rows passed; the newest is ring[(seen - 1) % limit]
  const std::string prefix = CounterPrefix(user_id);
  LEDGER_RETURN_IF_ERROR(state.Scan(kUsageFamily, prefix, [&](std::string_view key,
                                                              std::string_view value) {
    int64_t start = 0;
    if (!CounterKeyStart(key, prefix.size(), &start)) return true;
    if (ring.size() < limit) ring.emplace_back();
    RawRow& slot = ring[seen++ % limit];
    slot.start = start;
    slot.value.assign(value);
    return true;
  }));
  out->reserve(ring.size());
  for (size_t i = 1; i <= ring.size(); ++i) {  // newest first: key order reversed
    const RawRow& raw = ring[(seen - i) % limit];
    UsageWindowRow row;
    row.window_start_s = raw.start;
    LEDGER_RETURN_IF_ERROR(DecodeUsageCounter(raw.value, &row.counter));
    out->push_back(std::move(row));
  }
  return Status::OK();
}

Status SumUserUsage(const StateReader& state, std::string_view user_id, WindowKind kind,
                    int64_t from_s, int64_t to_s, int64_t* out) {
  *out = 0;
  const std::string prefix = CounterPrefix(user_id);
  // Seeks to `from_s` (the keys order a user's windows by start): every trial consume sums its
  // trial days inside the writer's group, and a trial user's back-dated batch items (one a day
  // since 2000, 1,000 a request) left thousands of windows before the trial that a scan from
  // the user's first row stepped over one by one, for every tenant waiting on the writer.
  std::string scan_from = prefix;
  PutFixed64BE(&scan_from, static_cast<uint64_t>(std::max<int64_t>(0, from_s)));
  Status decode;
  LEDGER_RETURN_IF_ERROR(state.ScanFrom(kUsageFamily, prefix, scan_from,
                                        [&](std::string_view key, std::string_view value) {
    int64_t start = 0;
    if (!CounterKeyStart(key, prefix.size(), &start)) return true;
    if (start >= to_s) return false;
    if (start < from_s) return true;
    UsageCounter counter;
    decode = DecodeUsageCounter(value, &counter);
    if (!decode.ok()) return false;
    if (counter.kind == kind) *out += counter.used;
    return true;
  }));
  return decode;
}

Status ScanUsageWindows(const StateReader& state, int64_t from_s, int64_t to_s,
                        const std::function<bool(int64_t, std::string_view, WindowKind)>& fn) {
  // Seeks to the range: the index holds every window since the log began.
  std::string start(kTimeIndexPrefix);
  PutFixed64BE(&start, static_cast<uint64_t>(std::max<int64_t>(from_s, 0)));
  Status inner;
  Status s = state.ScanFrom(kUsageFamily, kTimeIndexPrefix, start,
                            [&](std::string_view key, std::string_view) {
    const size_t head = sizeof(kTimeIndexPrefix) - 1;
    if (key.size() < head + 8) return true;
    const int64_t start = static_cast<int64_t>(DecodeFixed64BE(key.data() + head));
    if (start >= to_s) return false;
    if (start < from_s) return true;
    std::string_view user = key.substr(head + 8);
    // <user>\0<kind>; user ids hold no NUL.
    if (user.size() >= 2 && user[user.size() - 2] == '\0') {
      const auto kind = static_cast<uint8_t>(user.back());
      if (kind > static_cast<uint8_t>(WindowKind::kCalendarMonth)) return true;
      return fn(start, user.substr(0, user.size() - 2), static_cast<WindowKind>(kind));
    }
    // Written before the kind was keyed: the kind its counter row names.
    std::string value;
    UsageCounter counter;
    inner = state.Get(kUsageFamily, StartOnlyCounterKey(user, start), &value);
    if (inner.IsNotFound()) {
      inner = Status::OK();
      return true;
    }
    if (inner.ok()) inner = DecodeUsageCounter(value, &counter);
    return inner.ok() && fn(start, user, counter.kind);
  });
  LEDGER_RETURN_IF_ERROR(s);
  return inner;
}

Status HasUsageKey(const StateReader& state, std::string_view user_id,
                   std::string_view idempotency_key, bool* found) {
  std::string value;
  Status s = state.Get(kUsageFamily, UsageDedupeKey(user_id, idempotency_key), &value);
  *found = s.ok();
  return s.IsNotFound() ? Status::OK() : s;
}

Status UsageCountersFold::Apply(const Event& event, const StateReader& state,
                                RowWriter* rows) const {
  if (!StartsWith(event.type, "usage.") && !StartsWith(event.type, "bench.")) {
    // The access epoch: anything but usage (and `ledgerctl bench`'s synthetic events) may change
    // what GetUserAccess answers.
    std::string value;
    PutFixed64BE(&value, event.position.value());
    value.append(reinterpret_cast<const char*>(event.hash.data()), event.hash.size());
    return rows->Put(kUsageFamily, kEpochKey, value);
  }
  if (event.type == kUsageBatchRecordedV1) return ApplyBatchRecorded(event, state, rows);
  const bool recorded = event.type == kUsageRecordedV1;
  const bool threshold = event.type == kUsageThresholdReachedV1;
  const bool reset = event.type == kUsageWindowResetV1;
  if (!recorded && !threshold && !reset) return Status::OK();
  rapidjson::Document data;
  data.Parse(event.data.data(), event.data.size());
  if (data.HasParseError() || !data.IsObject()) return Malformed(event.type, "data is not JSON");
  if (recorded) return ApplyRecorded(event, data, state, rows);
  if (threshold) return ApplyThreshold(event, data, state, rows);
  return ApplyReset(data, state, rows);
}

// ---- cache ---------------------------------------------------------------------------------------

Status UsageAccessCache::ReadEpoch(const StateReader& state, std::string* epoch) {
  epoch->clear();
  Status s = state.Get(kUsageFamily, kEpochKey, epoch);
  return s.IsNotFound() ? Status::OK() : s;
}

Status UsageAccessCache::Get(const StateReader& state, std::string_view user_id,
                             std::shared_ptr<const MeteringSubject>* out) {
  std::string epoch;
  LEDGER_RETURN_IF_ERROR(ReadEpoch(state, &epoch));
  return Get(state, epoch, user_id, out);
}

Status UsageAccessCache::Get(const StateReader& state, std::string_view epoch,
                             std::string_view user_id,
                             std::shared_ptr<const MeteringSubject>* out) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (epoch != epoch_) {
      entries_.clear();
      epoch_ = epoch;
    }
    auto it = entries_.find(user_id);
    if (it != entries_.end()) {
      hits_.Add();
      *out = it->second;
      return Status::OK();
    }
  }
  misses_.Add();
  auto subject = std::make_shared<MeteringSubject>();
  LEDGER_RETURN_IF_ERROR(GetUserAccess(state, user_id, &subject->access));
  std::lock_guard<std::mutex> lock(mu_);
  if (epoch == epoch_) {
    if (entries_.size() >= limits::kUsageAccessCacheEntriesMax) entries_.clear();
    entries_.insert_or_assign(std::string(user_id), subject);
  }
  *out = std::move(subject);
  return Status::OK();
}

Status LoadMeteringSubject(const StateReader& state, std::string_view user_id,
                           UsageAccessCache* cache, int64_t now_s,
                           std::shared_ptr<const MeteringSubject>* out) {
  if (cache != nullptr) {
    LEDGER_RETURN_IF_ERROR(cache->Get(state, user_id, out));
    MeteringSubjectAt(now_s, out);
    return Status::OK();
  }
  auto subject = std::make_shared<MeteringSubject>();
  LEDGER_RETURN_IF_ERROR(GetUserAccessAt(state, user_id, now_s, &subject->access));
  *out = std::move(subject);
  return Status::OK();
}

void MeteringSubjectAt(int64_t now_s, std::shared_ptr<const MeteringSubject>* subject) {
  if (!(*subject)->access.SupersessionEndedAt(now_s)) return;
  auto at = std::make_shared<MeteringSubject>(**subject);
  at->access.ResolveAt(now_s);
  *subject = std::move(at);
}

// ---- meter ---------------------------------------------------------------------------------------

void UsageMeter::RenderMetrics(std::string* out) const {
  auto counter = [out](const char* name, const char* help, const char* labels, uint64_t value,
                       bool header) {
    if (header) {
      *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
    }
    *out += std::string(name) + labels + " " + std::to_string(value) + "\n";
  };
  counter("ledger_usage_consume_allowed_total", "Consumes admitted and recorded.", "",
          consume_allowed.Value(), true);
  counter("ledger_usage_consume_replayed_total",
          "Consumes answered from their idempotency record (not counted again).", "",
          consume_replayed.Value(), true);
  const char* denied = "ledger_usage_consume_denied_total";
  const char* denied_help = "Consumes refused (not appended), by reason.";
  counter(denied, denied_help, "{reason=\"quota_exceeded\"}", denied_quota_exceeded.Value(), true);
  counter(denied, denied_help, "{reason=\"subscription_required\"}",
          denied_subscription_required.Value(), false);
  counter(denied, denied_help, "{reason=\"trial_expired\"}", denied_trial_expired.Value(), false);
  counter(denied, denied_help, "{reason=\"trial_exhausted\"}", denied_trial_exhausted.Value(),
          false);
  counter(denied, denied_help, "{reason=\"payment_failed\"}", denied_payment_failed.Value(),
          false);
  counter(denied, denied_help, "{reason=\"service_not_in_plan\"}",
          denied_service_not_in_plan.Value(), false);
  counter(denied, denied_help, "{reason=\"quantity_exceeds_quota\"}",
          denied_quantity_exceeds_quota.Value(), false);
  counter("ledger_usage_batch_requests_total", "POST /api/v1/usage/events requests decided.", "",
          batch_requests.Value(), true);
  const char* items = "ledger_usage_batch_items_total";
  const char* items_help = "Batch items, by result.";
  counter(items, items_help, "{result=\"accepted\"}", batch_accepted.Value(), true);
  counter(items, items_help, "{result=\"duplicate\"}", batch_duplicates.Value(), false);
  counter(items, items_help, "{result=\"invalid\"}", batch_invalid.Value(), false);
  counter("ledger_usage_threshold_events_total", "usage.threshold_reached.v1 events appended.", "",
          threshold_events.Value(), true);
  counter("ledger_usage_window_resets_total", "usage.window_reset.v1 events appended.", "",
          window_resets.Value(), true);
  const char* cache = "ledger_usage_access_cache_lookups_total";
  counter(cache, "Access lookups of the metering deciders, by cache result.", "{result=\"hit\"}",
          cache_.hits(), true);
  counter(cache, "", "{result=\"miss\"}", cache_.misses(), false);
}

// ---- consume -------------------------------------------------------------------------------------

ConsumeUsage::ConsumeUsage(ConsumeRequest request, UsageAccessCache* cache)
    : request_(std::move(request)), cache_(cache) {
  idempotency_scope = IdempotencyScope(request_.user_id);
  idempotency_key = request_.idempotency_key;
  request_hash = CanonicalHash(request_);
}

std::string ConsumeUsage::IdempotencyScope(std::string_view user_id) {
  std::string scope = "usage.consume|";
  scope.append(user_id);
  return scope;
}

Hash ConsumeUsage::CanonicalHash(const ConsumeRequest& r) {
  std::string canonical = "usage.consume.v1";
  for (std::string_view part : {std::string_view(r.user_id), std::string_view(r.service),
                                std::string_view(r.metadata_json)}) {
    canonical.push_back('\0');
    canonical.append(part);
  }
  canonical.push_back('\0');
  canonical.append(std::to_string(r.quantity));
  return Sha256(canonical);
}

Status ConsumeUsage::Decide(const DecideContext& context, Decision* decision) {
  const ConsumeRequest& r = request_;
  outcome_ = ConsumeOutcome();
  outcome_.decided = true;
  outcome_.now_us = context.now_us;
  const int64_t now_s = FloorSeconds(context.now_us);
  if (r.quantity < 1 || r.quantity > limits::kUsageConsumeQuantityMax || r.user_id.empty() ||
      r.idempotency_key.empty()) {
    return Status::Make(Code::kUnprocessable, "invalid_request", "malformed consume");
  }
  bool key_used = false;
  LEDGER_RETURN_IF_ERROR(HasUsageKey(*context.state, r.user_id, r.idempotency_key, &key_used));
  if (key_used) {
    return Status::Conflict("idempotency_key_reused",
                            "idempotency_key was already used for usage recorded by "
                            "POST /api/v1/usage/events");
  }
  std::shared_ptr<const MeteringSubject> subject;
  LEDGER_RETURN_IF_ERROR(
      LoadMeteringSubject(*context.state, r.user_id, cache_, now_s, &subject));
  UsageTerms terms;
  Status access = ResolveConsumeTerms(*subject, now_s, &terms);
  outcome_.window = terms.window;
  outcome_.limit = terms.limit;
  LEDGER_RETURN_IF_ERROR(access);
  const Plan& plan = *subject->plan();
  if (!plan.HasService(r.service)) {
    return Status::Make(Code::kPermissionDenied, "service_not_in_plan",
                        "the " + plan.id + " plan does not include " + r.service);
  }
  // More than a whole window allows can never be consumed: a 429 with Retry-After would have the
  // caller retry forever.
  if (terms.limit && r.quantity > *terms.limit) {
    return Status::Make(Code::kUnprocessable, "quantity_exceeds_quota",
                        "quantity " + std::to_string(r.quantity) + " is more than the " +
                            std::to_string(*terms.limit) + " calls a whole " +
                            std::string(WindowKindName(terms.window.kind)) + " allows");
  }
  UsageCounter counter;
  CounterStored stored = CounterStored::kAbsent;
  int64_t carry_from = -1;
  LEDGER_RETURN_IF_ERROR(
      LoadCounter(*context.state, r.user_id, terms.window, now_s, &counter, &stored, &carry_from));
  outcome_.used = counter.used;
  outcome_.quota_frees_s =
      terms.limit ? QuotaFreesAt(counter, terms.window, *terms.limit, counter.used, r.quantity)
                  : terms.window.end_s;
  // A trial whose calls are used up for good -- all of them, or its last day's -- answers 402:
  // a 429's Retry-After would send the caller to the trial's end, where the answer is 402.
  auto trial_exhausted = [&](std::string what) {
    return PaymentRequired("trial_exhausted",
                           what + "; the trial ends at " +
                               FormatRfc3339Seconds(terms.trial->end_s) +
                               ": subscribe to a paid plan to continue");
  };
  // The trial's cap never resets: a quantity over what is left of it fails until the trial
  // ends, and then the answer is 402 -- so it is 402 now, whatever the day window says.
  std::optional<int64_t> trial_left;
  if (terms.trial && terms.trial_limit) {
    int64_t trial_used = 0;
    LEDGER_RETURN_IF_ERROR(SumUserUsage(*context.state, r.user_id, WindowKind::kTrialDay,
                                        terms.trial->start_s, terms.trial->end_s, &trial_used));
    trial_left = std::max<int64_t>(0, *terms.trial_limit - trial_used);
    if (r.quantity > *trial_left) {
      const std::string cap = "the trial's " + std::to_string(*terms.trial_limit) + " calls";
      return trial_exhausted(*trial_left == 0 ? cap + " are used up"
                                              : "only " + std::to_string(*trial_left) + " of " +
                                                    cap + " are left");
    }
  }
  if (terms.limit && counter.used + r.quantity > *terms.limit) {
    const int64_t window_left = std::max<int64_t>(0, *terms.limit - counter.used);
    if (terms.trial && terms.window.end_s >= terms.trial->end_s) {
      return trial_exhausted(window_left == 0 ? "the calls of the trial's last day are used up"
                                              : "only " + std::to_string(window_left) +
                                                    " calls of the trial's last day are left");
    }
    // The same for a subscription scheduled to end before the window would renew (or the calls
    // carried into it stop counting): a 429's Retry-After would send the caller to the end of
    // access, where the answer is 402.
    const std::optional<int64_t> access_end = subject->access.access_end();
    if (access_end && outcome_.quota_frees_s >= *access_end) {
      return PaymentRequired(
          "subscription_required",
          "the quota of " + std::to_string(*terms.limit) + " calls for this " +
              std::string(WindowKindName(terms.window.kind)) + " is used up and the " +
              "subscription ends at " + FormatRfc3339Seconds(*access_end) +
              ", before it renews: subscribe to a plan to continue");
    }
    const std::string quota = std::to_string(*terms.limit) + " calls for this " +
                              std::string(WindowKindName(terms.window.kind));
    return Status::Make(Code::kResourceExhausted, "quota_exceeded",
                        window_left == 0 ? "the quota of " + quota + " is used up"
                                         : "only " + std::to_string(window_left) + " of the " +
                                               quota + " are left");
  }
  std::optional<int64_t> trial_remaining;
  if (trial_left) trial_remaining = *trial_left - r.quantity;

  RecordFields f;
  f.user_id = r.user_id;
  f.service = r.service;
  f.quantity = r.quantity;
  f.source = "consume";
  f.idempotency_key = r.idempotency_key;
  f.occurred_at_us = context.now_us;
  f.window = terms.window;
  const WindowText window_text(terms.window);
  f.window_text = &window_text;
  f.uncut_end_s = terms.uncut_end_s;
  f.plan = &plan;
  f.subscription_id = SubscriptionIdOf(*subject);
  f.limit = terms.limit;
  f.used_after = counter.used + r.quantity;
  f.carry_from_s = carry_from;
  f.metadata_json = r.metadata_json;
  decision->events.reserve(3);
  decision->events.push_back(RecordedEvent(f));
  AppendThresholdEvents(f, &counter, &decision->events);
  outcome_.used = f.used_after;
  if (terms.limit) {
    outcome_.quota_frees_s = QuotaFreesAt(counter, terms.window, *terms.limit, f.used_after, 1);
  }

  std::optional<int64_t> remaining;
  if (terms.limit) remaining = *terms.limit - f.used_after;
  if (trial_remaining) remaining = std::min(remaining.value_or(*trial_remaining), *trial_remaining);
  // The quota after this call, as GetCurrentUsage reads it: when this call used the calls up for
  // good (CallsUsedUpReason), the next consume is 402 and no reset comes -- no X-RateLimit-*, as
  // its replay (Replayed) has none. They told "Remaining: 0" and a Reset at the trial's end,
  // midnight or the end of access, where the answer is 402.
  CurrentUsage after;
  after.has_plan = true;
  after.terms = terms;
  after.used = f.used_after;
  after.quota_frees_s = outcome_.quota_frees_s;
  after.remaining = remaining;
  after.trial_remaining = trial_remaining;
  after.access_end = subject->access.access_end();
  if (CallsUsedUpReason(after).empty()) outcome_.remaining = remaining;
  decision->http_status = 200;
  decision->body = AdmittedAnswer(f, remaining);
  return Status::OK();
}

// The quota now, not the first answer's: its "remaining" next to the time left in the window
// current now told neither (a stale count, or a used-up old window's 0 with a new window's reset).
// None when a consume would now be 402 -- also for calls used up for good (CallsUsedUpReason: a
// trial's 700, its last day's, a window cut by a scheduled end), which told "Remaining: 0" and a
// Reset where the answer is 402. A read error leaves the headers off: the replay itself stands.
void ConsumeUsage::Replayed(const DecideContext& context) {
  outcome_ = ConsumeOutcome();
  outcome_.replayed = true;
  outcome_.now_us = context.now_us;
  const int64_t now_s = FloorSeconds(context.now_us);
  std::shared_ptr<const MeteringSubject> subject;
  CurrentUsage current;
  if (!LoadMeteringSubject(*context.state, request_.user_id, cache_, now_s, &subject).ok() ||
      !GetCurrentUsage(*context.state, *subject, request_.user_id, now_s, &current).ok() ||
      !current.has_plan || !current.error.ok() || !CallsUsedUpReason(current).empty()) {
    return;
  }
  outcome_.window = current.terms.window;
  outcome_.limit = current.terms.limit;
  outcome_.used = current.used;
  outcome_.remaining = current.remaining;
  outcome_.quota_frees_s = current.quota_frees_s;
}

// ---- batch ---------------------------------------------------------------------------------------

RecordUsageBatch::RecordUsageBatch(std::vector<UsageBatchItem> items, UsageAccessCache* cache)
    : items_(std::move(items)), cache_(cache) {}

namespace {

// Appends `s` as a JSON string, escaped as rapidjson::Writer escapes (quote, backslash, control
// characters); the batch decider writes its JSON by hand, as rapidjson's Writer was a large part
// of the writer's per-item cost.
void AppendJsonString(std::string* out, std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  out->push_back('"');
  size_t run = 0;  // start of the part not yet copied
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default: {
        const char u[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
        out->append(u, sizeof(u));
      }
    }
  }
  out->append(s.data() + run, s.size() - run);
  out->push_back('"');
}

void AppendJsonInt(std::string* out, int64_t v) {
  char buf[24];
  const auto end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
  out->append(buf, static_cast<size_t>(end - buf));
}

struct ViewPairHash {
  size_t operator()(const std::pair<std::string_view, std::string_view>& p) const {
    const size_t a = std::hash<std::string_view>()(p.first);
    return a ^ (std::hash<std::string_view>()(p.second) + 0x9e3779b97f4a7c15ULL + (a << 6) +
                (a >> 2));
  }
};

// What one RecordUsageBatch decision keeps across its items: the (user, key) pairs it classified
// and, per user, its access, the counters as its own earlier items left them (the fold applies the
// items in the same order and arrives at the same figures) and the usage.batch_recorded.v1 being
// written. The writer's cost per item is what batching is for, so per item there is one dedupe
// lookup and one JSON object appended to its user's event; a (user, window) counter row is read
// once per decision, the access epoch once, and the terms and the occurred_at text are computed
// again only when an item's time differs from its user's previous item (the items of a request
// mostly share it). Everything here refers into the command's items, which outlive the decision.
class BatchRecorder {
 public:
  BatchRecorder(const StateReader& state, UsageAccessCache* cache, int64_t now_us, size_t items)
      : state_(state),
        cache_(cache),
        min_us_(now_us - limits::kUsageBackdateHorizonSeconds * kMicrosPerSecond),
        max_us_(now_us + limits::kUsageFutureSkewSeconds * kMicrosPerSecond),
        now_s_(FloorSeconds(now_us)) {
    seen_.reserve(items);
  }

  // Looks up the dedupe rows of every valid item at once (StateReader::Contains), and reads those
  // that exist (what their keys recorded), before Classify.
  Status Prefetch(const std::vector<UsageBatchItem>& items) {
    std::vector<std::string> keys;
    std::vector<size_t> of_item;  // keys[k] belongs to items[of_item[k]]
    keys.reserve(items.size());
    of_item.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].invalid_reason.empty()) continue;
      keys.push_back(UsageDedupeKey(items[i].user_id, items[i].idempotency_key));
      of_item.push_back(i);
    }
    std::vector<bool> found;
    LEDGER_RETURN_IF_ERROR(state_.Contains(kUsageFamily, keys, &found));
    recorded_.assign(items.size(), std::nullopt);
    std::string value;
    for (size_t k = 0; k < keys.size(); ++k) {
      if (!found[k]) continue;
      LEDGER_RETURN_IF_ERROR(state_.Get(kUsageFamily, keys[k], &value));
      LEDGER_RETURN_IF_ERROR(DecodeUsageKeyRecord(value, &recorded_[of_item[k]].emplace()));
    }
    return Status::OK();
  }

  // "accepted", "duplicate" or "invalid" (with `*reason`) for items[index] (after Prefetch).
  Status Classify(const UsageBatchItem& item, size_t index, int64_t at_us,
                  std::string_view* status, std::string_view* reason) {
    *reason = item.invalid_reason;
    if (reason->empty() && (at_us < min_us_ || at_us > max_us_)) *reason = "timestamp_out_of_range";
    if (!reason->empty()) {
      *status = "invalid";
      return Status::OK();
    }
    if (index >= recorded_.size()) return Status::Internal("usage batch classified before Prefetch");
    // A known key -- recorded before, or by an earlier accepted item of this batch -- is a
    // duplicate only for the same service and quantity (a retry); for other usage it is a
    // conflict, recorded neither way.
    bool known = false, same = false;
    if (const std::optional<UsageKeyRecord>& r = recorded_[index]; r.has_value()) {
      known = true;
      same = !r->has_item || (r->service == item.service && r->quantity == item.quantity);
    } else if (auto [it, fresh] = seen_.try_emplace({item.user_id, item.idempotency_key}, &item);
               !fresh) {
      known = true;
      same = it->second->service == item.service && it->second->quantity == item.quantity;
    }
    if (known && !same) {
      *status = "invalid";
      *reason = "idempotency_key_reused";
    } else {
      *status = known ? "duplicate" : "accepted";
    }
    return Status::OK();
  }

  // Adds the item to its user's usage.batch_recorded.v1 and decides the thresholds it reaches;
  // counts the latter.
  Status Record(const UsageBatchItem& item, int64_t at_us, size_t* thresholds) {
    UserBatch* u = nullptr;
    LEDGER_RETURN_IF_ERROR(User(item.user_id, &u));
    const int64_t at_s = FloorSeconds(at_us);
    if (u->counter == nullptr || at_s != u->at_s) {
      const Plan* plan = nullptr;
      RecordingTerms(*u->subject, at_s, &u->terms, &plan);
      u->at_s = at_s;
      u->counter = nullptr;
      for (const std::unique_ptr<LocalCounter>& c : u->counters) {
        if (SameCounter(c->window, u->terms.window)) u->counter = c.get();
      }
      if (u->counter == nullptr) {
        auto c = std::make_unique<LocalCounter>(u->terms.window, u->terms.uncut_end_s);
        CounterStored stored = CounterStored::kAbsent;
        int64_t carry_from = -1;
        LEDGER_RETURN_IF_ERROR(LoadCounter(state_, item.user_id, u->terms.window, now_s_,
                                           &c->counter, &stored, &carry_from));
        // The item opening a window with a carry records it, for the fold (ApplyCarryFrom).
        if (carry_from >= 0) {
          c->carry_json.assign(",\"carry_from\":\"").append(FormatRfc3339Seconds(carry_from));
          c->carry_json.push_back('"');
        }
        u->counter = c.get();
        u->counters.push_back(std::move(c));
      }
      u->limit_json.assign(",\"limit\":");
      if (u->terms.limit) {
        AppendJsonInt(&u->limit_json, *u->terms.limit);
      } else {
        u->limit_json.append("null");
      }
      u->limit_json.append(",\"used_after\":");
    }
    if (u->occurred.empty() || at_us != u->occurred_us) {
      u->occurred = FormatRfc3339Micros(at_us);
      u->occurred_us = at_us;
    }
    UsageCounter& counter = u->counter->counter;
    counter.used += item.quantity;

    // The per-item fields of usage.recorded.v1, same names and formats.
    std::string& out = u->data;
    if (u->open_items == 0) {
      out.append(u->header);
    } else {
      out.push_back(',');
    }
    out.append("{\"idempotency_key\":");
    AppendJsonString(&out, item.idempotency_key);
    out.append(",\"service\":");
    AppendJsonString(&out, item.service);
    out.append(",\"quantity\":");
    AppendJsonInt(&out, item.quantity);
    out.append(",\"occurred_at\":\"");
    out.append(u->occurred);
    out.push_back('"');
    out.append(u->counter->window_json);
    if (!u->counter->carry_json.empty()) {  // this item opened its window: once
      out.append(u->counter->carry_json);
      u->counter->carry_json.clear();
    }
    out.append(u->limit_json);
    AppendJsonInt(&out, counter.used);
    if (!item.metadata_json.empty()) {  // a compact JSON object (the route re-serialized it)
      out.append(",\"metadata\":");
      out.append(item.metadata_json);
    }
    out.push_back('}');
    ++u->open_items;

    RecordFields f;
    f.user_id = item.user_id;
    f.service = item.service;
    f.idempotency_key = item.idempotency_key;
    f.window_text = &u->counter->text;
    f.plan = u->plan;
    f.limit = u->terms.limit;
    f.used_after = counter.used;
    // Usage backfilled into a window that has ended announces nothing: its 80 % and 100 % are
    // news to no one now, and its limit is today's plan's, not necessarily the one it had.
    if (u->terms.window.end_s > now_s_) {
      *thresholds += AppendThresholdEvents(f, &counter, &u->thresholds);
    }
    if (u->open_items >= limits::kUsageBatchItemsMax ||
        out.size() >= limits::kUsageBatchEventDataBytesSoftMax) {
      Close(u);
    }
    return Status::OK();
  }

  // Closes the open events and appends every user's events, users in the order of their first
  // accepted item.
  void Finish(std::vector<NewEvent>* events) {
    size_t count = events->size();
    for (UserBatch* u : order_) {
      if (u->open_items > 0) Close(u);
      count += u->events.size();
    }
    events->reserve(count);
    for (UserBatch* u : order_) {
      for (NewEvent& e : u->events) events->push_back(std::move(e));
    }
  }

 private:
  struct LocalCounter {
    LocalCounter(const UsageWindow& w, std::optional<int64_t> uncut_end_s) : window(w), text(w) {
      window_json.append(",\"window_start\":\"").append(text.start);
      window_json.append("\",\"window_end\":\"").append(text.end);
      window_json.append("\",\"window_kind\":\"").append(text.kind).append("\"");
      if (uncut_end_s) {
        window_json.append(",\"window_uncut_end\":\"").append(FormatRfc3339Seconds(*uncut_end_s));
        window_json.push_back('"');
      }
    }
    UsageWindow window;
    UsageCounter counter;
    WindowText text;
    std::string window_json;  // ,"window_start":...,"window_kind":"..."[,"window_uncut_end":...]
    std::string carry_json;   // ,"carry_from":"..." until the item opening the window has it
  };
  struct UserBatch {
    std::string_view user_id;
    std::shared_ptr<const MeteringSubject> subject;
    const Plan* plan = nullptr;  // of `subject`
    std::string header;          // {"user_id":...,"items":[
    std::vector<std::unique_ptr<LocalCounter>> counters;  // the windows its items fall in
    // The previous item's second, terms, counter and "limit" text, and its occurred_at text.
    int64_t at_s = 0;
    UsageTerms terms;
    LocalCounter* counter = nullptr;
    std::string limit_json;  // ,"limit":...,"used_after":
    int64_t occurred_us = 0;
    std::string occurred;
    // The usage.batch_recorded.v1 being written (`open_items` items so far).
    std::string data;
    size_t open_items = 0;
    std::vector<NewEvent> thresholds;  // reached by items of the open event
    std::vector<NewEvent> events;      // closed events, each followed by its thresholds
  };

  Status User(std::string_view user_id, UserBatch** out) {
    std::unique_ptr<UserBatch>& u = users_[user_id];
    if (u == nullptr) {
      auto fresh = std::make_unique<UserBatch>();
      fresh->user_id = user_id;
      if (cache_ != nullptr) {
        if (!epoch_read_) {
          LEDGER_RETURN_IF_ERROR(UsageAccessCache::ReadEpoch(state_, &epoch_));
          epoch_read_ = true;
        }
        LEDGER_RETURN_IF_ERROR(cache_->Get(state_, epoch_, user_id, &fresh->subject));
        MeteringSubjectAt(now_s_, &fresh->subject);
      } else {
        LEDGER_RETURN_IF_ERROR(
            LoadMeteringSubject(state_, user_id, nullptr, now_s_, &fresh->subject));
      }
      // What RecordingTerms names for every item: the user's plan, also when the item counts
      // against the calendar month (no access, or after the trial).
      fresh->plan = fresh->subject->plan();
      // The fields common to the items (usage.recorded.v1's names), then the items array.
      std::string& h = fresh->header;
      h.append("{\"user_id\":");
      AppendJsonString(&h, user_id);
      h.append(",\"source\":\"batch\",\"plan_id\":");
      if (fresh->plan != nullptr) {
        AppendJsonString(&h, fresh->plan->id);
      } else {
        h.append("null");
      }
      h.append(",\"subscription_id\":");
      const std::string_view subscription_id = SubscriptionIdOf(*fresh->subject);
      if (subscription_id.empty()) {
        h.append("null");
      } else {
        AppendJsonString(&h, subscription_id);
      }
      h.append(",\"items\":[");
      u = std::move(fresh);
      order_.push_back(u.get());
    }
    *out = u.get();
    return Status::OK();
  }

  static void Close(UserBatch* u) {
    u->data.append("]}");
    u->events.push_back(NewEvent{std::string(kUsageBatchRecordedV1), std::string(u->user_id),
                                 std::move(u->data)});
    for (NewEvent& e : u->thresholds) u->events.push_back(std::move(e));
    u->thresholds.clear();
    u->data = std::string();
    u->open_items = 0;
  }

  const StateReader& state_;
  UsageAccessCache* const cache_;
  const int64_t min_us_, max_us_;
  const int64_t now_s_;
  bool epoch_read_ = false;
  std::string epoch_;       // the access epoch, read at the first user
  // Prefetch: each item's dedupe row, when it exists.
  std::vector<std::optional<UsageKeyRecord>> recorded_;
  // (user, key) of the items accepted so far, and the first item that brought each.
  std::unordered_map<std::pair<std::string_view, std::string_view>, const UsageBatchItem*,
                     ViewPairHash>
      seen_;
  std::unordered_map<std::string_view, std::unique_ptr<UserBatch>> users_;
  std::vector<UserBatch*> order_;  // users_ by first accepted item
};

}  // namespace

Status RecordUsageBatch::Decide(const DecideContext& context, Decision* decision) {
  counts_ = Counts();
  BatchRecorder recorder(*context.state, cache_, context.now_us, items_.size());
  std::string body;
  body.reserve(64 + items_.size() * 80);
  body.append("{\"results\":[");
  LEDGER_RETURN_IF_ERROR(recorder.Prefetch(items_));
  for (size_t i = 0; i < items_.size(); ++i) {
    const UsageBatchItem& item = items_[i];
    const int64_t at_us = item.timestamp_us.value_or(context.now_us);
    std::string_view status, reason;
    LEDGER_RETURN_IF_ERROR(recorder.Classify(item, i, at_us, &status, &reason));
    if (status == "accepted") {
      LEDGER_RETURN_IF_ERROR(recorder.Record(item, at_us, &counts_.thresholds));
      ++counts_.accepted;
    } else if (status == "duplicate") {
      ++counts_.duplicates;
    } else {
      ++counts_.invalid;
    }
    if (i > 0) body.push_back(',');
    body.append("{\"index\":");
    AppendJsonInt(&body, static_cast<int64_t>(i));
    body.append(",\"status\":\"");
    body.append(status);
    body.append("\",\"idempotency_key\":");
    AppendJsonString(&body, item.idempotency_key);
    if (status == "invalid") {
      body.append(",\"reason\":");
      AppendJsonString(&body, reason);
    }
    body.push_back('}');
  }
  recorder.Finish(&decision->events);
  body.append("],\"accepted\":");
  AppendJsonInt(&body, static_cast<int64_t>(counts_.accepted));
  body.append(",\"duplicates\":");
  AppendJsonInt(&body, static_cast<int64_t>(counts_.duplicates));
  body.append(",\"invalid\":");
  AppendJsonInt(&body, static_cast<int64_t>(counts_.invalid));
  body.push_back('}');
  decision->http_status = 200;
  decision->body = std::move(body);
  return Status::OK();
}

// ---- reset ---------------------------------------------------------------------------------------

UsageWindowReset::UsageWindowReset(std::string email, Actor actor,
                                   std::optional<std::string> reason, UsageAccessCache* cache)
    : email_(std::move(email)), actor_(std::move(actor)), reason_(std::move(reason)), cache_(cache) {}

// The window a reset restarts and what it counted: the current one (GetCurrentUsage), except
// past due with Stripe's retries over, where GetCurrentUsage shows the calendar month (the plan
// grants nothing until the invoice is paid) but the calls were counted in the plan's window and
// count there again once it is paid: a reset of the empty calendar month gave nothing back.
Status GetResetUsage(const StateReader& state, const MeteringSubject& subject,
                     std::string_view user_id, int64_t now_s, CurrentUsage* out) {
  LEDGER_RETURN_IF_ERROR(GetCurrentUsage(state, subject, user_id, now_s, out));
  UsageTerms paid;
  if (out->error.problem() != "payment_failed" ||
      !SubjectUsageTerms(subject.access, now_s, &paid, /*judge_payment=*/false).ok()) {
    return Status::OK();
  }
  UsageCounter counter;
  CounterStored stored = CounterStored::kAbsent;
  LEDGER_RETURN_IF_ERROR(LoadCounter(state, user_id, paid.window, now_s, &counter, &stored));
  out->terms = std::move(paid);
  out->used = counter.used;
  out->quota_frees_s = out->terms.window.end_s;
  out->services = std::move(counter.services);
  return Status::OK();
}

Status UsageWindowReset::Decide(const DecideContext& context, Decision* decision) {
  users_reset_ = 0;
  std::vector<std::string> user_ids;
  LEDGER_RETURN_IF_ERROR(FindUsersByEmailOrId(*context.state, email_, &user_ids));
  if (user_ids.empty()) return Status::NotFound("no subscriber with that email");
  if (user_ids.size() > limits::kUsageResetUsersMax) user_ids.resize(limits::kUsageResetUsersMax);
  users_reset_ = user_ids.size();
  const int64_t now_s = FloorSeconds(context.now_us);
  rapidjson::StringBuffer out;
  JsonWriter body(out);
  body.StartObject();
  json::Key(&body, "email");
  json::String(&body, email_);
  json::Key(&body, "users");
  body.StartArray();
  for (const std::string& user_id : user_ids) {
    std::shared_ptr<const MeteringSubject> subject;
    LEDGER_RETURN_IF_ERROR(LoadMeteringSubject(*context.state, user_id, cache_, now_s, &subject));
    CurrentUsage target;
    LEDGER_RETURN_IF_ERROR(GetResetUsage(*context.state, *subject, user_id, now_s, &target));
    const UsageWindow& window = target.terms.window;
    const int64_t used_before = target.used;
    rapidjson::StringBuffer buf;
    JsonWriter w(buf);
    w.StartObject();
    json::Key(&w, "user_id");
    json::String(&w, user_id);
    json::Key(&w, "email");
    json::String(&w, email_);
    WriteWindow(&w, window);
    json::Key(&w, "used_before");
    w.Int64(used_before);
    json::Key(&w, "reason");
    if (reason_) {
      json::String(&w, *reason_);
    } else {
      w.Null();
    }
    json::Key(&w, "actor");
    const std::string actor = ActorJson(actor_);
    w.RawValue(actor.data(), actor.size(), rapidjson::kObjectType);
    w.EndObject();
    decision->events.push_back(NewEvent{std::string(kUsageWindowResetV1),
                                        user_id, json::Text(buf)});

    body.StartObject();
    json::Key(&body, "user_id");
    json::String(&body, user_id);
    WriteWindow(&body, window);
    json::Key(&body, "used_before");
    body.Int64(used_before);
    body.EndObject();
  }
  body.EndArray();
  body.EndObject();
  decision->http_status = 200;
  decision->body = json::Text(out);
  return Status::OK();
}

// ---- queries -------------------------------------------------------------------------------------

std::string_view CallsUsedUpReason(const CurrentUsage& usage) {
  const UsageTerms& terms = usage.terms;
  if (!usage.error.ok() || !usage.has_plan) return "";
  // The cap first, as consume checks it: a trial starting at 15:00 UTC touches 8 UTC days, and
  // 100 calls in each of the first 7 use up its 700 on a day that also used its 100 but is not
  // the last -- consume answered 402 trial_exhausted while check-access said ok (the day's
  // quota alone, used up before the last day, was taken for a 429 that cures itself).
  if (terms.trial && usage.trial_remaining && *usage.trial_remaining == 0) {
    return "trial_exhausted";
  }
  const bool window_used_up = terms.limit && usage.used >= *terms.limit;
  if (!window_used_up) return "";
  if (terms.trial && terms.window.end_s >= terms.trial->end_s) return "trial_exhausted";
  if (usage.access_end && usage.quota_frees_s >= *usage.access_end) return "subscription_required";
  return "";
}

std::string AccessEndedReason(const MeteringSubject& subject, const CurrentUsage& usage) {
  if (subject.access.access == AccessLevel::kNone) return "";
  // ResolveConsumeTerms refuses with 402s only (access, a scheduled end, a trial's end).
  if (!usage.error.ok()) return usage.error.problem();
  return std::string(CallsUsedUpReason(usage));
}

namespace {

// GetPlanEnded, with the terms a consume would be held to when it has not ended.
Status PlanEnded(const MeteringSubject& subject, int64_t now_s, UsageTerms* terms,
                 std::string* ended) {
  ended->clear();
  if (subject.access.access == AccessLevel::kNone) return Status::OK();
  Status s = ResolveConsumeTerms(subject, now_s, terms);
  if (!s.ok()) {
    if (s.code() != Code::kPaymentRequired) return s;
    *ended = s.problem();
  }
  return Status::OK();
}

}  // namespace

Status GetPlanEnded(const MeteringSubject& subject, int64_t now_s, std::string* ended) {
  UsageTerms terms;
  return PlanEnded(subject, now_s, &terms, ended);
}

Status GetAccessEnded(const StateReader& state, const MeteringSubject& subject,
                      std::string_view user_id, int64_t now_s, std::string* ended) {
  UsageTerms terms;
  LEDGER_RETURN_IF_ERROR(PlanEnded(subject, now_s, &terms, ended));
  if (!ended->empty() || subject.access.access == AccessLevel::kNone) return Status::OK();
  // Calls are used up for good only in a trial, or in the window access ends in (terms.window
  // ends by the scheduled end; not when a comp takes over there): no counter to read otherwise.
  const std::optional<int64_t> end = subject.access.access_end();
  if (!terms.trial && !(end && terms.window.end_s >= *end)) return Status::OK();
  CurrentUsage usage;
  LEDGER_RETURN_IF_ERROR(GetCurrentUsage(state, subject, user_id, now_s, &usage));
  *ended = AccessEndedReason(subject, usage);
  return Status::OK();
}

Status GetCurrentUsage(const StateReader& state, const MeteringSubject& subject,
                       std::string_view user_id, int64_t now_s, CurrentUsage* out) {
  *out = CurrentUsage();
  out->error = ResolveConsumeTerms(subject, now_s, &out->terms);
  out->has_plan = subject.access.access != AccessLevel::kNone && subject.plan() != nullptr &&
                  !subject.access.EndedAt(now_s) && out->error.problem() != "payment_failed";
  if (!out->has_plan) {
    ComputeUsageTerms(nullptr, nullptr, now_s, &out->terms).IgnoreError();
  } else if (!out->error.ok()) {
    // An ended trial: its last day is the window to show (and to reset).
    const UsageWindow trial = out->terms.trial.value_or(out->terms.window);
    const int64_t last_day = UtcDayStart(trial.end_s - 1);
    out->terms.window = UsageWindow{std::max(last_day, trial.start_s), trial.end_s,
                                    WindowKind::kTrialDay};
  }
  // LoadCounter: a window not written yet shows what a restarted period carries into it, as
  // the consume that would write it counts.
  UsageCounter counter;
  CounterStored stored = CounterStored::kAbsent;
  LEDGER_RETURN_IF_ERROR(
      LoadCounter(state, user_id, out->terms.window, now_s, &counter, &stored));
  out->used = counter.used;
  out->quota_frees_s =
      out->terms.limit
          ? QuotaFreesAt(counter, out->terms.window, *out->terms.limit, counter.used, 1)
          : out->terms.window.end_s;
  out->services = std::move(counter.services);
  if (!out->has_plan) return Status::OK();
  out->access_end = subject.access.access_end();
  if (!out->error.ok()) {
    out->remaining = 0;
    return Status::OK();
  }
  if (out->terms.limit) out->remaining = std::max<int64_t>(0, *out->terms.limit - out->used);
  if (out->terms.trial && out->terms.trial_limit) {
    int64_t trial_used = 0;
    LEDGER_RETURN_IF_ERROR(SumUserUsage(state, user_id, WindowKind::kTrialDay,
                                        out->terms.trial->start_s, out->terms.trial->end_s,
                                        &trial_used));
    const int64_t trial_left = std::max<int64_t>(0, *out->terms.trial_limit - trial_used);
    out->trial_remaining = trial_left;
    out->remaining = std::min(out->remaining.value_or(trial_left), trial_left);
  }
  return Status::OK();
}

}  // namespace ledger::projections
