#include "events/log_consumer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "events/ledger.h"

namespace ledger {

LogConsumerCore::LogConsumerCore(Ledger* ledger, std::string log_name, std::string checkpoint_name,
                                 int checkpoint_interval_ms)
    : ledger_(ledger),
      log_name_(std::move(log_name)),
      checkpoint_name_(std::move(checkpoint_name)),
      checkpoint_interval_us_(int64_t{checkpoint_interval_ms} * 1000) {}

LogConsumerCore::~LogConsumerCore() { StopWithoutPersisting(); }

Status LogConsumerCore::Load(uint64_t* mark) {
  Position checkpoint;
  LEDGER_RETURN_IF_ERROR(ledger_->GetCheckpoint(checkpoint_name_, &checkpoint));
  const uint64_t head = ledger_->Head().value();
  *mark = checkpoint.value();
  if (*mark > head) {
    spdlog::error("{}: checkpoint {} is past the head {} (was the data directory replaced?); "
                  "continuing from the head",
                  log_name_, *mark, head);
    // Written (synced) before anything past the head is handled: kept in memory only, a stop
    // after handling head+1..k, once the log had grown past the old checkpoint, went on from
    // the old checkpoint -- k+1..old never handled.
    LEDGER_RETURN_IF_ERROR(ledger_->PutCheckpoint(checkpoint_name_, Position(head), /*sync=*/true));
    *mark = head;
  }
  persisted_mark_ = *mark;
  persisted_.store(persisted_mark_);
  return Status::OK();
}

void LogConsumerCore::StartThread(std::function<void()> run) {
  running_.store(true);
  thread_ = std::thread([this, run = std::move(run)] {
    run();
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = true;
    }
    finished_cv_.notify_all();
  });
}

uint64_t LogConsumerCore::StopAndJoin(std::chrono::steady_clock::time_point deadline,
                                      const std::function<void()>& at_deadline) {
  RequestStop(deadline, /*persist=*/true);
  if (at_deadline) {
    // Again every 100 ms past the deadline: the thread may have started its call just after one.
    std::unique_lock<std::mutex> lock(mu_);
    auto finished = [this] { return finished_; };
    if (!finished_cv_.wait_until(lock, deadline, finished)) {
      do {
        lock.unlock();
        at_deadline();
        lock.lock();
      } while (!finished_cv_.wait_for(lock, std::chrono::milliseconds(100), finished));
    }
  }
  thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return stop_target_;
}

void LogConsumerCore::StopWithoutPersisting() {
  if (!thread_.joinable()) return;
  RequestStop(std::chrono::steady_clock::now(), /*persist=*/false);
  thread_.join();
}

void LogConsumerCore::RequestStop(std::chrono::steady_clock::time_point deadline, bool persist) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_requested_ = true;
    stop_deadline_ = deadline;
    persist_on_stop_ = persist;
    stop_target_ = ledger_->Head().value();
    wake_ = true;
  }
  cv_.notify_one();
}

void LogConsumerCore::Notify() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  cv_.notify_one();
}

void LogConsumerCore::SetLastError(std::string error) {
  std::lock_guard<std::mutex> lock(error_mu_);
  last_error_ = std::move(error);
}

std::string LogConsumerCore::last_error() const {
  std::lock_guard<std::mutex> lock(error_mu_);
  return last_error_;
}

void LogConsumerCore::WaitForWork(int64_t wait_us) {
  std::unique_lock<std::mutex> lock(mu_);
  auto until = std::chrono::steady_clock::now() +
               std::chrono::microseconds(std::max<int64_t>(wait_us, 0));
  if (stop_requested_) until = std::min(until, stop_deadline_);
  cv_.wait_until(lock, until, [this] { return wake_; });
  wake_ = false;
}

bool LogConsumerCore::stop_requested() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stop_requested_;
}

bool LogConsumerCore::StopDue(uint64_t mark) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!stop_requested_) return false;
  return mark >= stop_target_ || std::chrono::steady_clock::now() >= stop_deadline_;
}

bool LogConsumerCore::persist_on_stop() const {
  std::lock_guard<std::mutex> lock(mu_);
  return persist_on_stop_;
}

void LogConsumerCore::Persist(uint64_t mark, int64_t now_us, bool force, bool now) {
  if (mark == persisted_mark_) return;
  if (!force && !now && now_us - last_persist_us_ < checkpoint_interval_us_) return;
  last_persist_us_ = now_us;
  Status s = ledger_->PutCheckpoint(checkpoint_name_, Position(mark), /*sync=*/force);
  if (!s.ok()) {
    SetLastError("writing the checkpoint: " + s.ToString());
    return;
  }
  persisted_mark_ = mark;
  persisted_.store(persisted_mark_);
}

Status LogConsumerCore::PersistSynced(uint64_t mark, int64_t now_us) {
  last_persist_us_ = now_us;
  LEDGER_RETURN_IF_ERROR(ledger_->PutCheckpoint(checkpoint_name_, Position(mark), /*sync=*/true));
  persisted_mark_ = mark;
  persisted_.store(persisted_mark_);
  return Status::OK();
}

int64_t LogConsumerCore::PersistDueInUs(uint64_t mark, int64_t now_us) const {
  if (mark == persisted_mark_) return std::numeric_limits<int64_t>::max();
  return std::max<int64_t>(0, last_persist_us_ + checkpoint_interval_us_ - now_us);
}

}  // namespace ledger
