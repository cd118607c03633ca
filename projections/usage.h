// Usage metering: quota windows, the usage counters projection, and the commands that record
// usage (with or without enforcement) and reset a window.
//
// Windows (ComputeUsageTerms, pure: plan + subscription + time):
//   trial plan (trial_days > 0, e.g. `trial`): the UTC day, clipped to the trial period
//     [trial start, trial start + trial_days days) (the trial start is Stripe's trial_start, else
//     the subscription's created, else its period start; Stripe's trial_end shortens the period
//     when earlier; a trial tier granted by an admin's override starts when the admin set it).
//     `api_calls_limit` calls per window AND limit × trial_days over the whole
//     trial (700 for the catalog's trial: a trial that starts mid-day touches 8 UTC days). After
//     the period: 402 "trial_expired", whatever the Stripe status says, until a paid plan. A
//     refusal no retry could cure before the trial ends (its 700 calls used, or its last day's)
//     is 402 "trial_exhausted" rather than a 429 whose Retry-After points at the trial's end.
//   limit_window "day" (no trial): the UTC day.
//   limit_window "month", and unlimited plans (recorded, never refused for quota): a month of the
//     subscription's Stripe billing period. A period of up to 32 days is one window; a longer one
//     (yearly prices) is cut into months from its start (day clamped to the month's end, anchored
//     on the start so it never drifts). When the period is over but no renewal has arrived yet,
//     months continue from its end (the renewal normally starts exactly there, so the counter
//     carries on), those of a one-month period on its billing anchor's day, as Stripe's renewals
//     ([Jan 31, Feb 28) -> [Feb 28, Mar 31)) -- unless it was canceled at its end
//     (UserAccess::EndedAt: no plan from then on).
//     No known period: the UTC calendar month.
//   Any window of a subscription scheduled to end (cancel_at, cancel_at_period_end) ends by that
//   time (UserAccess::scheduled_end): its calls used up, no retry can succeed before access ends,
//   so a consume over the quota is 402 "subscription_required", as a trial's last day is 402
//   "trial_exhausted", not a 429 whose Retry-After points past the end of access.
//   No plan (batch only): the UTC calendar month, no limit.
//
// Period restarts. Stripe starts a new period mid-period when a subscription's price interval
// changes (monthly <-> yearly: it resets the billing cycle anchor and invoices at once, crediting
// the unused time), and a new subscription has a period of its own; the billing month then begins
// at the new period's start, a window with no counter yet. Fresh at 0, switching cycles (about
// free, the credit paying for it) bought a new quota every time: a Professional user refused
// with 429 switched to monthly, then back to yearly, 10,000 calls each time. So a billing month
// whose counter does not exist yet, and that begins before the end of the user's latest billing
// month (by start, of any subscription or plan; its end as last recorded, before a scheduled end
// cut it: UsageCounter::UncutEnd), starts with that
// window's used, per-service counts and announced thresholds (UsageCounter::carried), each call
// counting as long as it would have counted without the restart -- until the end of the window
// that used it (the calls that window carried itself, after a second restart, until theirs): an
// upgrade to a bigger quota keeps the calls used and raises the limit, a cycle switch keeps the
// 429 until the old window's end (not the new window's: Professional with 10,000 used on Jan 30,
// switched on Jan 31 to a window [Jan 31, Feb 28), was refused until Feb 28 where Feb 1 would
// have started afresh), and 80 % / 100 % are not announced again for a limit already announced
// while they count. That end is the period's (its month's), not a cancel_at's that cut it when
// the calls were recorded: a customer who took cancel_at back ran on under the same counter, and
// the restart carried nothing (or stopped counting the calls at the old cancel_at) -- a fresh
// quota where the carry exists to stop one. Events record it (`window_uncut_end`) when cut. A
// restart after the old window has ended carries nothing. A renewal begins at or after the old window's end (a yearly period's last month ends at the
// period's end) and starts at 0; so does a window older than the latest (a back-dated batch
// item's). An admin's reset (usage.window_reset.v1) is how calls are given back. The carry is a
// decision: the consume (or batch) decider that opens such a window records the start of the
// window it carried from in the event (`carry_from` on usage.recorded.v1, on the batch item that
// opened the window), and the fold carries only when the event says so, from that window. Events
// without it -- all usage recorded before the carry existed -- fold as they were decided: a window
// that restarted then (Starter with 1,000 used, upgraded to Professional, 9,500 used since) keeps
// the 9,500 its events' used_after counted, however the log is replayed. The queries preview a
// window with no counter yet as the decider would (the same function), so they agree.
//
// Consume (ConsumeUsage, inside the writer's group commit): access (402 "subscription_required"
// without a subscription that grants access: no subscription, canceled/unpaid/paused/incomplete
// statuses, unknown plan, or past the time it was scheduled to end -- cancel_at_period_end's
// period end, cancel_at -- before Stripe's deletion arrived; past_due keeps access), trial expiry
// (402 "trial_expired"), the service (403 "service_not_in_plan"), then the quota: the counter for
// (user, window) is read from the group's state, which includes every earlier command of the same
// group, so the limit is exact whatever the concurrency: used + quantity > limit is 429
// "quota_exceeded" (a quantity over the whole limit, which no window could take, is 422
// "quantity_exceeds_quota"). A denial appends nothing and stores no idempotency record (a retry
// is evaluated again). An admitted consume
// appends usage.recorded.v1 and, when the window's total reaches ceil(limit × 80 / 100) or the
// limit, usage.threshold_reached.v1 — once per (window, limit, threshold): the counter row keeps
// which thresholds were announced for which limits (the last kUsageAnnouncedLimitsMax limits it
// announced for), so a window whose limit changes (an admin edits the plan, or the user changes
// plans within it) announces the new limit's thresholds once, and a limit it returns to is not
// announced again; an admin reset (usage.window_reset.v1) clears them, so they can be announced
// again in the same window.
//
// Batch (RecordUsageBatch): up to limits::kUsageBatchItemsMax items for any users, recorded
// without enforcement (no access, service or quota check) into the window each item's time falls
// in (for the user's current plan and subscription), each answered accepted / duplicate /
// invalid + reason. The accepted items of one user become ONE usage.batch_recorded.v1 (subject =
// the user id; items in request order, each with the per-item fields of usage.recorded.v1: key,
// service, quantity, occurred_at, window, limit, used_after, metadata), not one event per item:
// sealing, storing and folding an event costs far more than an item, and a user's history stays
// under one subject. A user's items spill into a next event only past
// limits::kUsageBatchEventDataBytesSoftMax bytes of data. Users' events come in the order of their
// first accepted item. Threshold events are decided the same way as for consume, once per (window,
// limit, threshold), and appended right after the batch event holding the item that crossed it.
// (Logs written before usage.batch_recorded.v1 hold batch items as usage.recorded.v1 with source
// "batch"; the fold applies both.)
//
// Deduplication. Every usage.recorded.v1 and every usage.batch_recorded.v1 item carries the
// client's idempotency_key; the fold keeps a row per (user, key), so a key is recorded at most once
// per user whichever route brings it: a batch item whose key is known (from an earlier batch, an
// earlier item of the same batch, or a consume) is "duplicate" when it has the service and the
// quantity the key recorded -- a retry -- and "invalid" with reason "idempotency_key_reused"
// when not (CONTRACT §2: the same key with another body is a conflict), recorded neither way: a
// "duplicate" for other usage was indistinguishable from a retry, so a user who consumed 1 call
// with a key made a service's item of 5,000 under it vanish, and so did a service's own retry
// with another quantity. The item's time and metadata are not compared (an item without a
// timestamp takes the time it arrives; metadata annotates). A consume whose key a batch already
// recorded is 409 "idempotency_key_reused". A consume retried with its own key is answered by the
// Ledger's idempotency record (scope "usage.consume|<user_id>"), status and body as first answered.
//
// The fold applies a usage.batch_recorded.v1 item by item with exactly the effect of the
// usage.recorded.v1 events it stands for (counters, per-service counts, dedupe rows), reading and
// writing each window's counter row once per event; so /usage/summary, consume's quota, the
// thresholds and `ledgerctl replay` agree whichever form the log holds.
//
// Rows (column family "usage"; integers big-endian, times Unix seconds):
//   c/<user>\0<u64 window_start><u8 kind>
//                                  counter (EncodeUsageCounter): window end and kind, used, limit,
//                                  thresholds announced, resets, recorded total, per service;
//                                  what a restarted period carried in (when it did); the window
//                                  end before a scheduled end cut it (when one did)
//   t/<u64 window_start><user>\0<u8 kind>
//                                  ""  index: every (window, user) by window start (admin stats:
//                                  scan a time range, then read the counters)
// A window is its user, start and kind: windows of different kinds may start at the same second
// (a trial day on the 1st of a month and that calendar month, both from midnight; a billing period
// that starts at midnight on the 1st and the calendar month) and are counted apart. The end is
// not part of it (it is the last record's: a billing month carried on past its period keeps its
// counter when the renewal starts there). Stores written before the kind was keyed hold
// c/<user>\0<u64 window_start> and t/<u64 window_start><user>: read as the window of the kind
// the row names, moved to the keyed form by that window's next write.
//   k/<user>\0<idempotency key>    u64 position of the usage.recorded.v1 or usage.batch_recorded.v1
//                                  that recorded the key || u64 quantity || service
//                                  (EncodeUsageKeyRecord)
//   e                              u64 position || 32-byte hash of the last event that was not
//                                  usage.* or bench.* (the "access epoch", see UsageAccessCache)
// User ids never contain '/' or NUL (the routes refuse them), so the prefixes are unambiguous.
//
// Invariant the cache relies on: what GetUserAccess() answers changes only with events whose type
// does not start with "usage." (subscription, plan, admin events). Keep it so.
//
// Thread safety: the pure functions and the fold are thread-safe; commands run on the ledger's
// writer thread; UsageAccessCache and UsageMeter are thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/metrics.h"
#include "events/status.h"
#include "projections/plan_catalog.h"
#include "projections/subscriptions.h"

namespace ledger::projections {

inline constexpr std::string_view kUsageFamily = "usage";
inline constexpr std::string_view kUsageRecordedV1 = "usage.recorded.v1";
inline constexpr std::string_view kUsageBatchRecordedV1 = "usage.batch_recorded.v1";
inline constexpr std::string_view kUsageThresholdReachedV1 = "usage.threshold_reached.v1";
inline constexpr std::string_view kUsageWindowResetV1 = "usage.window_reset.v1";

inline constexpr int64_t kSecondsPerDay = 86400;

// ---------------------------------------------------------------------------------------------
// Time helpers (UTC, Unix seconds)

int64_t UtcDayStart(int64_t t_s);
int64_t UtcMonthStart(int64_t t_s);
// `t_s` moved by `months` calendar months, the day clamped to the target month's last day.
int64_t AddUtcMonths(int64_t t_s, int64_t months);
// "2026-01-31T00:00:00Z".
std::string FormatRfc3339Seconds(int64_t t_s);
// "2026-01-31T00:00:00.000000Z" (what events/event.h FormatRfc3339 writes, without snprintf).
std::string FormatRfc3339Micros(int64_t t_us);
// RFC 3339 "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" (also lowercase t/z) to Unix
// microseconds. False when malformed or before 1970.
bool ParseRfc3339(std::string_view text, int64_t* out_us);

// ---------------------------------------------------------------------------------------------
// Windows

enum class WindowKind : uint8_t { kTrialDay = 0, kDay = 1, kBillingMonth = 2, kCalendarMonth = 3 };
std::string_view WindowKindName(WindowKind kind);  // "trial_day", "day", ...
bool ParseWindowKind(std::string_view name, WindowKind* out);

struct UsageWindow {
  int64_t start_s = 0;  // inclusive
  int64_t end_s = 0;    // exclusive
  WindowKind kind = WindowKind::kCalendarMonth;
  bool operator==(const UsageWindow&) const = default;
};

// The quota a piece of usage at one moment counts against.
struct UsageTerms {
  UsageWindow window;
  std::optional<int64_t> limit;  // calls per window; nullopt = unlimited / no plan
  // Trial plans only: the trial period and its total cap (limit × trial_days).
  std::optional<UsageWindow> trial;
  std::optional<int64_t> trial_limit;
  // Set only when the subscription's scheduled end (UserAccess::scheduled_end) cut window.end_s
  // short: where the window would end without it (the period's end, or its month's). A
  // scheduled end can be taken back (cancel_at: null), and the window then runs on to here under
  // the same counter: the calls used in it count until here after a period restart.
  std::optional<int64_t> uncut_end_s;
};

bool IsTrialPlan(const Plan& plan);

// The window containing `at_s` for a user on `plan` (nullptr: no plan) with `subscription`
// (nullptr: none known). Pure. Error only for a trial plan when `at_s` is at or after the end of
// the trial: kPaymentRequired "trial_expired" (`*out` then still names the expired trial).
Status ComputeUsageTerms(const Plan* plan, const SubscriptionRecord* subscription, int64_t at_s,
                         UsageTerms* out);

// ---------------------------------------------------------------------------------------------
// Counters (the fold's rows)

inline constexpr uint8_t kThreshold80 = 1;
inline constexpr uint8_t kThreshold100 = 2;

// The thresholds announced in a window for one limit.
struct AnnouncedThresholds {
  int64_t limit = 0;
  uint8_t bits = 0;  // kThreshold80 | kThreshold100
  bool operator==(const AnnouncedThresholds&) const = default;
};

// How many limits a window remembers its announcements for. A window's limit changes only when
// an admin edits the plan or the user changes plans within it, so a few cover every real case;
// past the bound the limit announced for longest ago is forgotten, and its thresholds may be
// announced again if the window returns to it.
inline constexpr size_t kUsageAnnouncedLimitsMax = 8;

// Calls a restarted period carried into a window that one earlier window used (see
// UsageCounter::carried), counted until `until_s`, that window's end (0: a row written before
// carries ended keeps them).
struct UsageCarry {
  int64_t calls = 0;
  std::map<std::string, int64_t, std::less<>> services;
  int64_t until_s = 0;
  bool operator==(const UsageCarry&) const = default;
};

struct UsageCounter {
  int64_t window_end_s = 0;  // of the last record: cut by a scheduled end when it was
  // The last record's window end before a scheduled end cut it (UsageTerms::uncut_end_s; 0: not
  // cut, window_end_s). A refused consume appends nothing, so after the customer took the
  // scheduled end back window_end_s stays cut while the window runs on: a period restart carries
  // the calls until UncutEnd(), not the cut end.
  int64_t uncut_end_s = 0;
  int64_t UncutEnd() const { return uncut_end_s > 0 ? uncut_end_s : window_end_s; }
  WindowKind kind = WindowKind::kCalendarMonth;
  int64_t used = 0;                    // since the window started or was last reset
  std::optional<int64_t> limit;        // of the last record
  // The thresholds announced since the window started or was last reset, per limit, the limit
  // announced for most recently last (at most kUsageAnnouncedLimitsMax). Per limit, not just for
  // the last one: a limit edited from 10,000 to 9,000 and back must not announce "80% of
  // 10,000" twice in one window.
  std::vector<AnnouncedThresholds> announced;
  int64_t resets = 0;
  int64_t recorded = 0;                // everything ever recorded in the window (resets ignored)
  std::map<std::string, int64_t, std::less<>> services;  // used per service (reset with `used`)
  // Of `used` and `services`: what the window started with, carried from the billing month whose
  // period restarted before its end (see "Period restarts" above), counted against this window's
  // quota but not used in it (the admin statistics count those calls once, in the window that
  // used them). One part per window the calls were used in, each counted until that window's end:
  // a second restart carries the first window's calls until the first window's end and the
  // second's own until the second's (one part ending at the second's end would count the
  // first's calls for a month more). Cleared with `used` by a reset.
  std::vector<UsageCarry> carried;
  int64_t CarriedCalls() const;  // of all parts

  // Drops the parts of `carried` that end at or before `at_s` from `used` and `services` (and the
  // announcements of thresholds the calls left no longer reach, which are announced again when
  // reached). The deciders apply it at their command's time, the fold at each event's time (no
  // clock): the same instant, so they agree.
  void EndCarryAt(int64_t at_s);

  // The thresholds announced for `limit` (0: none).
  uint8_t AnnouncedFor(int64_t limit) const;
  // Marks `bits` announced for `limit` (the limit becomes the most recent; the oldest is
  // dropped past kUsageAnnouncedLimitsMax).
  void Announce(int64_t limit, uint8_t bits);
  bool operator==(const UsageCounter&) const = default;
};

std::string UsageCounterKey(std::string_view user_id, int64_t window_start_s, WindowKind kind);
std::string UsageDedupeKey(std::string_view user_id, std::string_view idempotency_key);
// A dedupe row's value: the position of the event that recorded the key and what the key
// recorded -- the service and the quantity -- so that a batch item reusing the key for other
// usage is told from a retry of the same item.
struct UsageKeyRecord {
  uint64_t position = 0;
  bool has_item = false;  // false: a row of fold version 6 (the position only)
  std::string service;
  int64_t quantity = 0;
};
std::string EncodeUsageKeyRecord(uint64_t position, std::string_view service, int64_t quantity);
Status DecodeUsageKeyRecord(std::string_view value, UsageKeyRecord* out);
std::string EncodeUsageCounter(const UsageCounter& counter);
Status DecodeUsageCounter(std::string_view value, UsageCounter* out);

// NotFound when the user has no row for that window (start and kind).
Status GetUsageCounter(const StateReader& state, std::string_view user_id, int64_t window_start_s,
                       WindowKind kind, UsageCounter* out);

struct UsageWindowRow {
  int64_t window_start_s = 0;
  UsageCounter counter;
};
// The user's windows, newest first (by start), at most `limit`; only those are decoded.
Status ListUserUsage(const StateReader& state, std::string_view user_id, size_t limit,
                     std::vector<UsageWindowRow>* out);
// Sum of `used` over the user's windows of `kind` starting in [from_s, to_s) (a trial's total:
// its trial days, not a calendar month of batch usage that starts within it). Seeks to `from_s`:
// the user's older windows are not read.
Status SumUserUsage(const StateReader& state, std::string_view user_id, WindowKind kind,
                    int64_t from_s, int64_t to_s, int64_t* out);
// The longest usage window: a billing period of up to 32 days is one window, a longer one is cut
// into months (calendar months and days are shorter).
inline constexpr int64_t kUsageWindowSecondsMax = 32 * 86400;
// Calls fn(window_start_s, user_id, kind) for every window starting in [from_s, to_s), oldest
// first, until it returns false (admin statistics).
Status ScanUsageWindows(const StateReader& state, int64_t from_s, int64_t to_s,
                        const std::function<bool(int64_t, std::string_view, WindowKind)>& fn);

// True when the user already recorded usage with this idempotency key.
Status HasUsageKey(const StateReader& state, std::string_view user_id,
                   std::string_view idempotency_key, bool* found);

class UsageCountersFold final : public Fold {
 public:
  std::string_view Name() const override { return kUsageFamily; }
  // Raise with any change to the rows Apply writes: the store's rows are rebuilt (fold.h).
  // 2: a billing month that restarts an unfinished one starts with its usage (carried).
  // 3: only when its event records the carry (carry_from): version 2 carried into every
  // restarted window of the history too, windows whose events never counted it.
  // 4: a reset of a window with no counter that counted nothing (used_before 0) writes no row;
  // version 3 wrote a zero counter and its time-index row (a window and a user in usage-stats).
  // 5: carried calls count until the window that used them ends (UsageCounter::carried,
  // EndCarryAt at each event's time); version 4 kept them for the whole restarted window.
  // 6: the counter keeps its window's end before a scheduled end cut it (window_uncut_end,
  // UsageCounter::uncut_end_s), which a restart carries until; a store version 5 folded events
  // that name it into rows without it.
  // 7: a dedupe row (k/) holds the service and quantity the key recorded after the position
  // (UsageKeyRecord), which a batch compares its items with; version 6 held the position only.
  uint32_t Version() const override { return 7; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override;
};

// ---------------------------------------------------------------------------------------------
// What metering needs to know about a user (from GetUserAccess)

struct MeteringSubject {
  UserAccess access;
  // Convenience: the subscription row when there is one.
  const SubscriptionRecord* subscription() const {
    return access.subscription.has_subscription ? &access.subscription.subscription : nullptr;
  }
  const Plan* plan() const { return access.plan ? &*access.plan : nullptr; }
};

// Caches MeteringSubjects for the writer thread, valid for one "access epoch" (the fold's `e`
// row): any event that is not usage.* changes the epoch and empties the cache, so a cached answer
// is always what GetUserAccess would say against the same state. Bounded: cleared when it holds
// limits::kUsageAccessCacheEntriesMax users.
// Thread-safe; meant for the writer (deciders), whose state moves forward.
class UsageAccessCache {
 public:
  Status Get(const StateReader& state, std::string_view user_id,
             std::shared_ptr<const MeteringSubject>* out);
  // The same with the epoch already read (ReadEpoch) from the same `state`: a decider that looks
  // up many users reads the epoch row once, as it cannot change while the decider runs (the
  // command's own events are applied after Decide()).
  Status Get(const StateReader& state, std::string_view epoch, std::string_view user_id,
             std::shared_ptr<const MeteringSubject>* out);
  static Status ReadEpoch(const StateReader& state, std::string* epoch);
  uint64_t hits() const { return hits_.Value(); }
  uint64_t misses() const { return misses_.Value(); }

 private:
  // Heterogeneous lookup: find() by string_view without building a std::string.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  std::mutex mu_;
  std::string epoch_;  // GUARDED_BY(mu_)
  std::unordered_map<std::string, std::shared_ptr<const MeteringSubject>, Hash, std::equal_to<>>
      entries_;  // GUARDED_BY(mu_)
  Counter hits_;
  Counter misses_;
};

// Loads (no cache) or gets through `cache` when non-null, as a request at `now_s` sees it
// (UserAccess::ResolveAt: the cache holds what the state says, whatever the clock).
Status LoadMeteringSubject(const StateReader& state, std::string_view user_id,
                           UsageAccessCache* cache, int64_t now_s,
                           std::shared_ptr<const MeteringSubject>* out);
// `*subject` as a request at `now_s` sees it: a resolved copy when the override it was
// superseding decides again by then (UserAccess::ResolveAt), else unchanged.
void MeteringSubjectAt(int64_t now_s, std::shared_ptr<const MeteringSubject>* subject);

// Process-wide metering state the daemon owns and the usage routes share: the access cache and
// the counters rendered on /metrics. Thread-safe.
class UsageMeter {
 public:
  UsageAccessCache* cache() { return &cache_; }
  Counter consume_allowed;
  Counter consume_replayed;             // answered from the idempotency record
  Counter denied_quota_exceeded;        // 429
  Counter denied_subscription_required; // 402
  Counter denied_trial_expired;         // 402
  Counter denied_trial_exhausted;       // 402
  Counter denied_payment_failed;        // 402
  Counter denied_service_not_in_plan;   // 403
  Counter denied_quantity_exceeds_quota; // 422
  Counter batch_requests;
  Counter batch_accepted;
  Counter batch_duplicates;
  Counter batch_invalid;
  Counter threshold_events;
  Counter window_resets;
  // Prometheus text (`ledger_usage_*`).
  void RenderMetrics(std::string* out) const;

 private:
  UsageAccessCache cache_;
};

// ---------------------------------------------------------------------------------------------
// Commands

// One consume. Decision: 200 + the JSON answer (ConsumeAnswer), usage.recorded.v1 and threshold
// events. Errors: 402 subscription_required / trial_expired, 403 service_not_in_plan, 429
// quota_exceeded (see `outcome()` for the figures), 409 idempotency_key_reused (key recorded by a
// batch), 422 invalid_request / quantity_exceeds_quota.
struct ConsumeRequest {
  std::string user_id;
  std::string service;
  int64_t quantity = 1;
  std::string idempotency_key;
  std::string metadata_json;  // "" or a compact JSON object (validated by the caller)
};

// What a consume decided, for the HTTP answer (headers, 429 body) and metrics.
// A replay (`replayed`) answers with the first answer's body; window, limit and remaining are then
// the user's quota at now_us, as the summary's current window tells it (GetCurrentUsage), for the
// rate-limit headers: limit or remaining nullopt when there is none to tell (unlimited, or a
// consume would now be refused with 402).
struct ConsumeOutcome {
  bool decided = false;              // Decide() ran (false: replayed or never reached the writer)
  bool replayed = false;             // Replayed() ran
  UsageWindow window;                // the window refused or admitted against
  std::optional<int64_t> limit;      // of `window` (the trial cap when the trial total refused)
  int64_t used = 0;                  // after (admitted) or before (refused)
  std::optional<int64_t> remaining;  // admitted: what the answer says (trial cap included);
                                     // nullopt, as after Replayed, when the call used the calls
                                     // up for good (CallsUsedUpReason): no X-RateLimit-* then
  int64_t now_us = 0;
  // When the quota next frees up (X-RateLimit-Reset; a 429's Retry-After): window.end_s, or
  // earlier while calls a restarted period carried into the window count and their end leaves
  // room (for the refused quantity; admitted: for one more call). See "Period restarts".
  int64_t quota_frees_s = 0;
};

class ConsumeUsage final : public Command {
 public:
  // `cache` may be null.
  ConsumeUsage(ConsumeRequest request, UsageAccessCache* cache);
  Status Decide(const DecideContext& context, Decision* decision) override;
  void Replayed(const DecideContext& context) override;
  const ConsumeOutcome& outcome() const { return outcome_; }
  const ConsumeRequest& request() const { return request_; }

  // SHA-256 over the canonical request (what Command::request_hash is set to).
  static Hash CanonicalHash(const ConsumeRequest& request);
  // "usage.consume|<user_id>".
  static std::string IdempotencyScope(std::string_view user_id);

 private:
  ConsumeRequest request_;
  UsageAccessCache* cache_;
  ConsumeOutcome outcome_;
};

// One metered item of a batch. `invalid_reason` non-empty: refused by the caller's validation
// (answered "invalid" in order, never recorded).
struct UsageBatchItem {
  std::string user_id;
  std::string service;
  int64_t quantity = 0;
  std::string idempotency_key;
  std::optional<int64_t> timestamp_us;  // when it happened; default: the append time
  std::string metadata_json;            // "" or a compact JSON object
  std::string invalid_reason;
};

// Records a batch without enforcement. Decision: 200 + {"accepted","duplicates","invalid",
// "results":[{"index","status","idempotency_key"[,"reason"]}]} (a known key with another service
// or quantity: "invalid", "idempotency_key_reused"; see Deduplication); events: a usage.batch_recorded.v1
// per user with accepted items (see the header comment) and the thresholds. Items whose timestamp
// is more than limits::kUsageFutureSkewSeconds ahead of the writer's clock, or more than
// limits::kUsageBackdateHorizonSeconds (62 days) behind it, are invalid ("timestamp_out_of_range"):
// decided here at the command's time, recorded in the event or not at all, so a replay of the
// log (which folds, never decides) agrees whatever day it runs.
class RecordUsageBatch final : public Command {
 public:
  RecordUsageBatch(std::vector<UsageBatchItem> items, UsageAccessCache* cache);
  Status Decide(const DecideContext& context, Decision* decision) override;
  struct Counts {
    size_t accepted = 0, duplicates = 0, invalid = 0, thresholds = 0;
  };
  const Counts& counts() const { return counts_; }

 private:
  std::vector<UsageBatchItem> items_;
  UsageAccessCache* cache_;
  Counts counts_;
};

// Resets the current window (GetResetUsage) of every user linked to `email`
// (FindUsersByEmail, decided in the writer): one usage.window_reset.v1 each, appended even when
// the window is empty (it is an audit fact; the fold then writes no counter for a window that has
// none and counted nothing). 404 "not_found" when no user has that email. For a subscription
// past due whose latest invoice Stripe will not retry, GetCurrentUsage shows the calendar month
// (the plan grants nothing meanwhile); the reset takes the plan's window instead, where its calls
// were counted and count again once the invoice is paid.
// Decision body: {"email","users":[{"user_id","window_start","window_end","window_kind",
// "used_before"}]}.
class UsageWindowReset final : public Command {
 public:
  UsageWindowReset(std::string email, Actor actor, std::optional<std::string> reason,
                   UsageAccessCache* cache);
  Status Decide(const DecideContext& context, Decision* decision) override;
  size_t users_reset() const { return users_reset_; }

 private:
  std::string email_;
  size_t users_reset_ = 0;
  Actor actor_;
  std::optional<std::string> reason_;
  UsageAccessCache* cache_;
};

// ---------------------------------------------------------------------------------------------
// Queries for the HTTP answers

// The window usage at `now_s` counts against for this user, with its counter (zero when absent).
// `error` is the consume refusal that would apply now (402 codes), OK otherwise.
struct CurrentUsage {
  bool has_plan = false;             // a plan that grants access (the trial may have ended; not
                                     // past a scheduled end: UserAccess::EndedAt; not past due
                                     // with no retry left: 402 payment_failed)
  UsageTerms terms;
  Status error;
  int64_t used = 0;                  // in terms.window
  int64_t quota_frees_s = 0;         // when one call the window's quota refuses now is taken:
                                     // terms.window.end_s, or earlier when the calls a restarted
                                     // period carried into it stop counting then
  std::optional<int64_t> remaining;  // calls a consume could still take now (trial cap included);
                                     // nullopt = unlimited / no plan
  std::optional<int64_t> trial_remaining;  // what is left of a trial's whole cap (limit ×
                                           // trial_days); nullopt when there is no cap
  std::optional<int64_t> access_end;  // the subscription's scheduled end, when access ends then
                                      // (UserAccess::access_end: not when a comp comes back
                                      // there); terms.window ends by the scheduled end
  std::map<std::string, int64_t, std::less<>> services;
};
Status GetCurrentUsage(const StateReader& state, const MeteringSubject& subject,
                       std::string_view user_id, int64_t now_s, CurrentUsage* out);

// The window a reset (UsageWindowReset) restarts at `now_s`, with its counter: GetCurrentUsage,
// except past due with Stripe's retries over (error payment_failed), where the calls were counted
// in the plan's window and count there again once the invoice is paid: `terms` (the window and
// its limit), `used` and `services` are that window's, `has_plan` and `remaining` stay as
// GetCurrentUsage says (no access). The admin's one-subscriber view shows it, so that it shows
// what a reset resets (it showed the empty calendar month while the reset restarted the billing
// month).
Status GetResetUsage(const StateReader& state, const MeteringSubject& subject,
                     std::string_view user_id, int64_t now_s, CurrentUsage* out);

// Why no call can be consumed before access ends, "" when one can or a later window cures it:
// what a consume of one call answers 402 for, in consume's order. "trial_exhausted": a trial's
// whole cap used up (whatever the day), or its last day's calls; "subscription_required": the
// window's calls used up and the subscription scheduled to end before the window renews. A
// window's quota used up that a later window cures is a 429, not this. The one predicate of
// check-access, my-access and the summary.
std::string_view CallsUsedUpReason(const CurrentUsage& usage);

// The terms a consume would be checked against (the errors ConsumeUsage answers for access and
// trial expiry, not for the service or the quota). Exposed for tests and my-access.
Status ResolveConsumeTerms(const MeteringSubject& subject, int64_t now_s, UsageTerms* out);
// The same for a UserAccess (what a MeteringSubject holds).
Status ResolveAccessTerms(const UserAccess& access, int64_t now_s, UsageTerms* out);
// What consume decides about `access` at `now_s` before the service and the quota: "" when the
// access its status grants holds, else the problem a consume answers 402 with --
// "subscription_required" (no subscription, a status that grants nothing, an unknown plan, past
// a scheduled end before Stripe's deletion), "trial_expired" (a trial past its end, whatever
// Stripe's status still says; an admin's trial too) or "payment_failed" (past due and Stripe will
// not retry the latest invoice: UserAccess::PaymentAbandoned). Pure. The admin views' effective
// access (admin.h EffectiveAccessAt) is this decision, not a copy of its rules: judging only the
// status and the scheduled end, they showed an ended trial as access "granted" ("grace" for a
// trial past due after a declined first charge), counted it in the overview's `comped` and
// revenue by tier's trial subscribers, while consume answered 402 trial_expired.
std::string AccessRefusalAt(const UserAccess& access, int64_t now_s);

// Why the access a user's status grants is over at `now_s` -- what my-access says as
// access_ended and a consume refuses with 402: "trial_expired" (a trial past its end, whatever
// Stripe's status still says; an admin's trial never ends at Stripe), "subscription_required"
// (past the time it was canceled for, before Stripe's deletion arrived; or the window's calls
// used up when access ends before it renews), "trial_exhausted" (CallsUsedUpReason has both),
// "payment_failed" (past due, Stripe's retries over: UserAccess::PaymentAbandoned) --
// or "" when it is not over, or when the status grants no access at all.
// One decision for my-access, check-access and BYOK (ByokAllowed): BYOK checked only the status
// and the plan, so an expired or used-up trial on a plan with byok_enabled kept adding keys and
// calling providers while my-access said byok_enabled false. Pure: `now_s` is the caller's (a
// command's time in a decider). From `usage`, GetCurrentUsage of `subject` at that time:
std::string AccessEndedReason(const MeteringSubject& subject, const CurrentUsage& usage);
// The same, reading the counters it needs from `state` (none unless the plan is a trial or
// access ends in the current window).
Status GetAccessEnded(const StateReader& state, const MeteringSubject& subject,
                      std::string_view user_id, int64_t now_s, std::string* ended);
// Its first half, what a consume checks before the service: the plan's access over at `now_s`
// whatever its calls ("trial_expired", "subscription_required"), else "". check-access answers
// it before service_not_in_plan, as consume does; calls used up come after the service.
Status GetPlanEnded(const MeteringSubject& subject, int64_t now_s, std::string* ended);

}  // namespace ledger::projections
