// BYOK: the provider API keys users bring (routes in http/byok_routes.cc).
//
// A key is never in the log, on Kafka or in a row in plaintext: the HTTP layer seals it before the
// command is made (http/secret_box.h: AES-256-GCM, associated data = ByokAssociatedData), and the
// events carry only the sealed form, the id of the key-encryption key (LEDGER_MASTER_KEY_FILE,
// which never leaves the daemon), and a hint for people ("sk-…wxyz"). Replaying the log rebuilds
// the `byok` rows.
//
// Crypto-shredding: the log is permanent (hash-chained, on Kafka, in exports), so a key sealed
// under the master key itself would open for anyone holding the master key and a copy of the log
// long after the user removed it. A key is therefore sealed under a random data key of its own
// ("v2:", SecretBox::SealWithDataKey), and only that data key, wrapped under the master key, is
// kept -- outside the log, in the side family "byok_data_keys" (events/ledger.h SideRow), written
// in the same WriteBatch as the byok.key_added.v1 that carries the sealed key. Removing a key, or
// replacing it by adding another for the provider, deletes its data-key row in the batch of that
// event: from then on the ciphertext in the log opens for nobody. Keys added before data keys
// ("v1:", sealed under the master key) have no data-key row and still open, but cannot be shredded.
// The family is the one piece of state not derivable from the log: the fold never reads it,
// replay does not rebuild it (a store rebuilt from the log alone has no key to open: users add
// theirs again), and backups must copy the data directory.
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
// Side rows (column family "byok_data_keys", not a fold: LedgerOptions::side_families):
//   <user_id>/<provider>/<key_id>   the key's wrapped data key (SecretBox's "v1:" form)
//
// Thread safety: the fold and the queries are pure functions of their StateReader; the commands
// run on the writer thread.
#pragma once

#include <cstdint>
#include <map>
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
// The side family of the keys' wrapped data keys (above): declare it in
// LedgerOptions::side_families of any ledger that adds keys (AllSideFamilies()).
inline constexpr std::string_view kByokDataKeysFamily = "byok_data_keys";
// The encrypted_key of a key sealed under a data key of its own (SecretBox::SealWithDataKey).
inline constexpr std::string_view kByokDataKeySealedPrefix = "v2:";
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
// The wrapped data key of a "v2:" key; NotFound when there is none (the key was removed or
// replaced -- shredded --, was added before data keys, or the store was rebuilt from the log).
Status GetByokWrappedDataKey(const StateReader& state, std::string_view user_id,
                             std::string_view provider, std::string_view key_id,
                             std::string* wrapped);

// A row of byok_data_keys: whose key's data key it is, and that data key wrapped.
struct ByokDataKeyRow {
  std::string user_id;
  std::string provider;
  std::string key_id;
  std::string wrapped;
};
// Up to `limit` rows of byok_data_keys in key order, from the first after the row `after` names
// (its user_id/provider/key_id; an empty `after`: from the first row). Fewer than `limit` once
// the family ends. Corruption on a row whose key is not <user_id>/<provider>/<key_id>.
Status ListByokDataKeys(const StateReader& state, const ByokDataKeyRow& after, size_t limit,
                        std::vector<ByokDataKeyRow>* out);
// The keys sealed under a key-encryption key itself ("v1:", added before data keys), counted by
// the kek_id they were sealed under: they open only with that key, as long as the log lives.
Status CountByokKeysSealedUnderKeks(const StateReader& state,
                                    std::map<std::string, int64_t>* by_kek_id);

// Adds (or replaces) the user's key for a provider. The caller validated the provider and sealed
// the key: under a data key of its own ("v2:", with `wrapped_data_key`, written as the key's
// side row beside the event and never into it), or, only for keys sealed before data keys,
// under the master key ("v1:", no wrapped data key). A replaced key's data-key row is deleted
// in the same batch. 403 "byok_not_in_plan" unless ByokAllowed at the command's time (a trial
// expired or used up is refused so too, its reason in the detail). Body
// (201): {"provider","key_id","label","hint","added_at","replaced_key_id"}.
class AddByokKey final : public Command {
 public:
  AddByokKey(std::string user_id, ByokKeyRow key, std::string wrapped_data_key = "");
  ~AddByokKey() override;
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string user_id_;
  ByokKeyRow key_;
  std::string wrapped_data_key_;
};

// 404 "not_found" when the user has no key for the provider. Deletes the key's data-key row in
// the batch of its byok.key_removed.v1 (crypto-shredding, above). Body: {"provider","key_id",
// "removed":true}.
class RemoveByokKey final : public Command {
 public:
  RemoveByokKey(std::string user_id, std::string provider);
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string user_id_;
  std::string provider_;
};

// Master-key rotation (http/byok_rotation.h, which does the crypto): each row of `rows` (its
// `wrapped` the data key as wrapped when it was read) gets `rewrapped[i]` -- the same data key,
// wrapped under the new master key -- if it still holds what was read: a key removed or replaced
// meanwhile keeps its own row. The puts carry SideRow::shred_replaced: once they are durable the
// family is compacted and the old wrappings leave the table files. Appends no event (a data key
// never goes into the log; the "v2:" keys there open with either wrapping). All rows or none, in
// one synced batch. Body: {"rewrapped":N}, the rows replaced.
class RewrapByokDataKeys final : public Command {
 public:
  RewrapByokDataKeys(std::vector<ByokDataKeyRow> rows, std::vector<std::string> rewrapped);
  ~RewrapByokDataKeys() override;
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::vector<ByokDataKeyRow> rows_;
  std::vector<std::string> rewrapped_;
};

// Records a test's outcome for the key that was tested. 409 "key_changed" when the user's key for
// the provider is no longer `key_id` (replaced while the provider was asked); 404 "not_found" when
// it was removed meanwhile. `provider_status` outside 100-599 (0: no answer) is recorded as null.
// Body: {"provider","key_id","result","provider_status","detail","tested_at"}.
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
