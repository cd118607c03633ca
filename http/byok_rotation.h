// BYOK master-key rotation: the data keys of the BYOK keys (projections/byok.h, side family
// byok_data_keys) wrapped under a previous key-encryption key (LEDGER_MASTER_KEY_PREVIOUS_FILES)
// are wrapped again under the current one (LEDGER_MASTER_KEY_FILE). ledgerd runs it at start,
// once the store is open and before the HTTP server serves.
//
// Only the wrapped data keys change: the "v2:" keys in the log, on Kafka and in exports are
// sealed under their data keys and open with the new wrapping as with the old. A "v1:" key
// (sealed under a key-encryption key itself, in its byok.key_added.v1) cannot be re-wrapped: it
// opens only with the key it names (kek_id), which must stay configured for it.
//
// Crash safety: the rows are replaced in batches, each one command (projections/byok.h
// RewrapByokDataKeys: one synced WriteBatch, all rows or none, no event). A row holds either
// wrapping at any instant, and every configured key is tried on each row, so a run that a crash
// or a failed write cut short is completed by the next start. Once a batch is durable the family
// is compacted (SideRow::shred_replaced), so the table files keep no old wrapping; the write-ahead
// log file holding the old rows' puts keeps them until its next flush (events/side_shredder.h).
//
// Thread safety: call from one thread; the ledger may serve other commands meanwhile (a row
// removed or replaced meanwhile is left as it is).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "events/ledger.h"
#include "events/status.h"
#include "http/secret_box.h"

namespace ledger::http {

// Rows re-wrapped per command: a few hundred bytes each, one WriteBatch.
inline constexpr size_t kByokRewrapBatchRows = 256;

struct ByokRotationReport {
  // Rows re-wrapped under the current key, by the id of the previous key that opened them.
  std::map<std::string, int64_t> rewrapped;
  int64_t current = 0;     // rows the current key opened already
  int64_t unopenable = 0;  // rows no configured key opens (left as they are)
  // "v1:" keys by the id of the key-encryption key they are sealed under (kek_id): they need it.
  std::map<std::string, int64_t> sealed_under_kek;
};

// Re-wraps every row of byok_data_keys that `current` does not open and one of `previous` does,
// `batch_rows` rows per command; fills *report. The first failed command's status is returned
// (what was re-wrapped before it stays re-wrapped). Never logs: the caller logs the report.
// `cancel` (may be null; ledgerd's startup signals) is read before each batch: once true, the
// run stops there with Unavailable "startup_cancelled", and the next run re-wraps the rest.
Status RotateByokDataKeys(Ledger* ledger, const SecretBox& current,
                          const std::vector<const SecretBox*>& previous, size_t batch_rows,
                          ByokRotationReport* report,
                          const std::atomic<bool>* cancel = nullptr);

}  // namespace ledger::http
