#include "http/byok_rotation.h"

#include <memory>
#include <utility>

#include "projections/byok.h"

namespace ledger::http {

namespace pj = ledger::projections;

Status RotateByokDataKeys(Ledger* ledger, const SecretBox& current,
                          const std::vector<const SecretBox*>& previous, size_t batch_rows,
                          ByokRotationReport* report, const std::atomic<bool>* cancel) {
  *report = ByokRotationReport{};
  pj::ByokDataKeyRow after;
  std::vector<pj::ByokDataKeyRow> rows;
  for (;;) {
    {
      std::unique_ptr<ReadView> view = ledger->Snapshot();
      LEDGER_RETURN_IF_ERROR(pj::ListByokDataKeys(*view, after, batch_rows, &rows));
    }
    if (rows.empty()) break;
    after = rows.back();
    std::vector<pj::ByokDataKeyRow> stale;
    std::vector<std::string> rewrapped;
    std::map<std::string, int64_t> opened_by_id;  // counted into the report once durable
    for (pj::ByokDataKeyRow& row : rows) {
      const std::string aad = pj::ByokAssociatedData(row.user_id, row.provider, row.key_id);
      std::string data_key;
      if (current.UnwrapDataKey(row.wrapped, aad, &data_key).ok()) {
        WipeSecret(&data_key);
        ++report->current;
        continue;
      }
      std::string again;
      const SecretBox* opened_by = nullptr;
      for (const SecretBox* old : previous) {
        Status rewrap = current.RewrapDataKey(*old, row.wrapped, aad, &again);
        if (rewrap.ok()) {
          opened_by = old;
          break;
        }
        // Opened but not sealed again (OpenSSL failed): not a row this key leaves unopened.
        if (rewrap.problem() != "unsealable") return rewrap;
      }
      if (opened_by == nullptr) {
        ++report->unopenable;
        continue;
      }
      ++opened_by_id[opened_by->key_id()];
      stale.push_back(std::move(row));
      rewrapped.push_back(std::move(again));
    }
    const bool last = rows.size() < batch_rows;
    if (!stale.empty()) {
      if (cancel != nullptr && cancel->load()) {
        return Status::Unavailable("startup_cancelled", "the BYOK re-wrap was cancelled");
      }
      pj::RewrapByokDataKeys command(std::move(stale), std::move(rewrapped));
      LEDGER_RETURN_IF_ERROR(ledger->Submit(&command).status);
      for (const auto& [id, count] : opened_by_id) report->rewrapped[id] += count;
    }
    if (last) break;
  }
  std::unique_ptr<ReadView> view = ledger->Snapshot();
  return pj::CountByokKeysSealedUnderKeks(*view, &report->sealed_under_kek);
}

}  // namespace ledger::http
