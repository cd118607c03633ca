// BYOK: the provider API keys users bring (routes in http/byok_routes.cc).
//
// A key is never in the log, on Kafka or in a row in plaintext: the HTTP layer seals it with the
// key-encryption key (http/secret_box.h: AES-256-GCM, associated data = ByokAssociatedData) before
// the command is made, and the events carry only the sealed form, the id of the key-encryption
// key it was sealed under, and a hint for people ("sk-…wxyz"). Replaying the log rebuilds these
// rows; opening a sealed key needs LEDGER_MASTER_KEY_FILE, which never leaves the daemon.
//
// Events (schemas/events/byok.*.schema.json), subject = the user id:
//   byok.key_added.v1    {user_id, provider, key_id, label, hint, encrypted_key, kek_id,
//                         replaced_key_id}: one key per (user, provider); adding again replaces
//   byok.key_removed.v1  {user_id, provider, key_id}
//   byok.key_tested.v1   {user_id, provider, key_id, result: valid|invalid|error,
//                         provider_status}: the outcome of POST /keys/test/{provider}
//
// Rows (column family "byok"):
//   key/<user_id>/<provider>   ByokKeyRow JSON
//
// Thread safety: the fold and the queries are pure functions of their StateReader; the commands
// run on the writer thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/status.h"
#include "projections/subscriptions.h"

namespace ledger::projections {

inline constexpr std::string_view kByokFamily = "byok";
inline constexpr std::string_view kByokKeyAddedV1 = "byok.key_added.v1";
inline constexpr std::string_view kByokKeyRemovedV1 = "byok.key_removed.v1";
inline constexpr std::string_view kByokKeyTestedV1 = "byok.key_tested.v1";

inline constexpr size_t kByokKeyBytesMin = 16;
inline constexpr size_t kByokKeyBytesMax = 512;
inline constexpr size_t kByokLabelBytesMax = 100;
inline constexpr size_t kByokProviderBytesMax = 32;

// What a sealed key is bound to: "ledger-byok-v1\0<user>\0<provider>\0<key_id>".
std::string ByokAssociatedData(std::string_view user_id, std::string_view provider,
                               std::string_view key_id);
// "sk-…wxyz": the first 3 and the last 4 characters (keys have at least kByokKeyBytesMin).
std::string ByokKeyHint(std::string_view api_key);

// Whether a user may use BYOK at `now_s` (add and test keys; the providers' `available`): what
// my-access says as byok_enabled -- access at `now_s` (GetUserAccessAt: past a bought plan's
// scheduled end, the override it superseded) on a plan with byok_enabled whose access has not
// ended (projections/usage.h GetAccessEnded: a trial past its end or with its calls used up, a
// subscription past its scheduled end). `*ended` (may be null) gets that reason, "" when none.
// Pure: `now_s` is the request's clock, or the command's time in a decider.
Status ByokAllowed(const StateReader& state, std::string_view user_id, int64_t now_s,
                   bool* allowed, std::string* ended = nullptr);

struct ByokKeyRow {
  std::string provider;
  std::string key_id;
  std::optional<std::string> label;
  std::string hint;
  std::string encrypted_key;
  std::string kek_id;
  int64_t added_at_us = 0;
  std::optional<int64_t> tested_at_us;
  std::optional<std::string> test_result;  // valid | invalid | error
  std::optional<int64_t> test_provider_status;

  bool operator==(const ByokKeyRow&) const = default;
};

class ByokFold final : public Fold {
 public:
  std::string_view Name() const override { return kByokFamily; }
  // Raise with any change to the rows Apply writes: the store's rows are rebuilt (fold.h).
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override;
};

// The user's keys in provider order.
Status ListByokKeys(const StateReader& state, std::string_view user_id,
                    std::vector<ByokKeyRow>* out);
// NotFound when the user has no key for the provider.
Status GetByokKey(const StateReader& state, std::string_view user_id, std::string_view provider,
                  ByokKeyRow* out);

// Adds (or replaces) the user's key for a provider. The caller validated the provider and sealed
// the key. 403 "byok_not_in_plan" unless ByokAllowed at the command's time (a trial expired or
// used up is refused so too, its reason in the detail). Body
// (201): {"provider","key_id","label","hint","added_at","replaced_key_id"}.
class AddByokKey final : public Command {
 public:
  AddByokKey(std::string user_id, ByokKeyRow key);
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string user_id_;
  ByokKeyRow key_;
};

// 404 "not_found" when the user has no key for the provider. Body: {"provider","key_id",
// "removed":true}.
class RemoveByokKey final : public Command {
 public:
  RemoveByokKey(std::string user_id, std::string provider);
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string user_id_;
  std::string provider_;
};

// Records a test's outcome for the key that was tested. 409 "key_changed" when the user's key for
// the provider is no longer `key_id` (replaced while the provider was asked); 404 "not_found" when
// it was removed meanwhile. Body:
// {"provider","key_id","result","provider_status","detail","tested_at"}.
class RecordByokKeyTest final : public Command {
 public:
  RecordByokKeyTest(std::string user_id, std::string provider, std::string key_id,
                    std::string result, int provider_status, std::string detail);
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string user_id_, provider_, key_id_, result_;
  int provider_status_;
  std::string detail_;
};

}  // namespace ledger::projections
