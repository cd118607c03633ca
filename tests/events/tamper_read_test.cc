// Stored events altered on disk: what the ledger's own reads (open, ReadEvents, ScanRaw) do with
// them. `ledgerctl verify` names the damage (tests/tools/verify_test.cc); these check that the
// daemon's reads do not serve it.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "events/ledger.h"
#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

namespace ledger {
namespace {

using testing::FlipByteInFile;
using testing::MarkerFor;
using testing::TempDir;
using testing::WriteMarkedLog;

// A store of `events` marked events (one command each), flushed to one table file.
void WriteFlushedLog(const std::string& path, size_t events) {
  auto ledger = testing::OpenTestLedger(path);
  ASSERT_NE(ledger, nullptr);
  WriteMarkedLog(ledger.get(), events, 1);
  ASSERT_TRUE(ledger->Flush().ok());
}

// The acceptance run's store: five events, all in one table block, a byte of the third one's
// data flipped. The open's first read of the log (FlushedEventHead, without block checksums)
// cached that block, and every checksummed read after it took the cached copy: ledgerd started
// and served the altered event. The block must be checked: the open fails, naming corruption.
TEST(TamperReadTest, AFlippedByteInTheOnlyTableBlockFailsTheOpen) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 5);
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(3), 9).empty());

  LedgerOptions options;
  options.path = dir.path();
  std::unique_ptr<Ledger> ledger;
  Status open = Ledger::Open(options, &ledger);
  EXPECT_TRUE(open.IsCorruption()) << open.ToString();
  if (open.ok()) {
    std::vector<Event> events;
    Status read = ledger->ReadEvents(Position(0), 10, {}, &events);
    EXPECT_FALSE(read.ok());
    ledger.reset();
  }

  // A read-only open with block checksums (ledgerctl export): its head check reads without them,
  // and its reads after that must not get the block from there unchecked either.
  options.read_only = true;
  ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
  Status scan = ledger->ScanRaw(Position(1), Position(0), [](Position, std::string_view) {
    return true;
  });
  EXPECT_TRUE(scan.IsCorruption()) << scan.ToString();
}

}  // namespace
}  // namespace ledger
