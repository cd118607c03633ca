#include "tools/export.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>

#include <rapidjson/document.h>

#include "events/coding.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"
#include "tools/store.h"

namespace ledger::tools {
namespace {

using testing::MarkerFor;
using testing::OpenTestLedger;
using testing::RunLedgerctl;
using testing::TempDir;
using testing::WriteMarkedLog;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(ExportTest, WritesOneValidCloudEventPerLine) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 10, 3); }
  std::unique_ptr<Ledger> ledger;
  ASSERT_TRUE(OpenReadOnly({dir.path(), {}, true}, &ledger).ok());

  std::ostringstream out;
  uint64_t exported = 0;
  ExportOptions options;
  ASSERT_TRUE(ExportCloudEvents(*ledger, options, out, &exported).ok());
  EXPECT_EQ(exported, 30u);
  std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 30u);
  std::string prev_hash(64, '0');
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_TRUE(testing::JsonMatchesSchemaFile("cloudevent.schema.json", lines[i]));
    rapidjson::Document doc;
    ASSERT_FALSE(doc.Parse(lines[i].c_str()).HasParseError()) << lines[i];
    EXPECT_STREQ(doc["specversion"].GetString(), "1.0");
    EXPECT_STREQ(doc["source"].GetString(), "/ledgerd");
    EXPECT_STREQ(doc["type"].GetString(), "test.marked.v1");
    EXPECT_STREQ(doc["datacontenttype"].GetString(), "application/json");
    const std::string digits = std::to_string(i + 1);
    EXPECT_EQ(doc["sequence"].GetString(), std::string(20 - digits.size(), '0') + digits);
    EXPECT_EQ(doc["prevhash"].GetString(), prev_hash);
    EXPECT_EQ(doc["data"]["m"].GetString(), MarkerFor(i + 1));
    prev_hash = doc["hash"].GetString();
  }
  EXPECT_EQ(prev_hash, HexEncode(ledger->HeadHash()));
}

TEST(ExportTest, AfterAndLimitSelectARange) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 5, 2); }
  std::unique_ptr<Ledger> ledger;
  ASSERT_TRUE(OpenReadOnly({dir.path(), {}, true}, &ledger).ok());
  ExportOptions options;
  options.after = Position(4);
  options.limit = 3;
  options.source = "urn:ledgerd:test";
  std::ostringstream out;
  uint64_t exported = 0;
  ASSERT_TRUE(ExportCloudEvents(*ledger, options, out, &exported).ok());
  std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 3u);
  rapidjson::Document first;
  first.Parse(lines[0].c_str());
  EXPECT_EQ(std::string(first["sequence"].GetString()), "00000000000000000005");
  EXPECT_EQ(std::string(first["source"].GetString()), "urn:ledgerd:test");

  options.after = Position(10);  // the head: nothing after it
  std::ostringstream none;
  ASSERT_TRUE(ExportCloudEvents(*ledger, options, none, &exported).ok());
  EXPECT_EQ(exported, 0u);
  EXPECT_TRUE(none.str().empty());

  options.after = Position(11);  // past the head: not "nothing new"
  std::ostringstream past;
  Status s = ExportCloudEvents(*ledger, options, past, &exported);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("chain head 10"), std::string::npos) << s.message();
  EXPECT_TRUE(past.str().empty());
}

// A cursor from another store or a restored older copy is past the head: exit 64 naming the
// head, as verify's range past it (an empty export, exit 0, run after run would hide it).
TEST(ExportCliTest, AfterPastTheHeadIsAUsageErrorNamingTheHead) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 4, 2); }
  testing::ProcessResult at = RunLedgerctl("export --data-dir " + dir.path() + " --after 8");
  EXPECT_EQ(at.exit_code, 0);
  EXPECT_TRUE(at.out.empty()) << at.out;
  testing::ProcessResult past =
      RunLedgerctl("export --data-dir " + dir.path() + " --after 9", /*keep_stderr=*/true);
  EXPECT_EQ(past.exit_code, 64) << past.out;
  EXPECT_NE(past.out.find("chain head 8"), std::string::npos) << past.out;
  EXPECT_EQ(past.out.find("specversion"), std::string::npos) << past.out;
}

// What is exported is the whole log or nothing past the damage: a missing position, an event
// stored under another position and an altered event each stop it with exit 65.
TEST(ExportCliTest, DamageInTheLogIsADataErrorNotAnExportWithAHole) {
  for (const std::string damage : {"delete", "move", "alter"}) {
    SCOPED_TRACE(damage);
    TempDir dir;
    { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 6, 1); }
    testing::EditRaw(dir.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
      rocksdb::ColumnFamilyHandle* events = testing::FindFamily(names, handles, "events");
      std::string value;
      ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, EncodePositionKey(4), &value).ok());
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), events, EncodePositionKey(4)).ok());
      if (damage == "move") {
        std::string five;
        ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, EncodePositionKey(5), &five).ok());
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, EncodePositionKey(4), five).ok());
      } else if (damage == "alter") {
        value[value.size() / 2] ^= 0x01;
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, EncodePositionKey(4), value).ok());
      }
    });
    testing::ProcessResult r =
        RunLedgerctl("export --data-dir " + dir.path(), /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 65) << r.out;
    EXPECT_NE(r.out.find("position 4"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("\"sequence\":\"00000000000000000005\""), std::string::npos) << r.out;
  }
}

// A forger rewrites event 5 of 8 and re-seals it: it checks out on its own, and only event 6's
// prev_hash shows it. An export ending at 5 (`--to` a live ledgerd's audit head, or `--limit`)
// wrote it with exit 0, and the next incremental run (`--after 5`) never linked it; it fails at
// 6 now, as `verify --to 5` does, without writing the forged event. A whole-log export that
// fails at 6 does not write it either.
TEST(ExportCliTest, ARangeEndingAtAReSealedEventFailsAtTheNextPosition) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 4, 2); }
  testing::RewriteStoredEvent(dir.path(), 5, /*reseal=*/true,
                              [](Event* event) { event->data = "{\"m\":\"forged\"}"; });
  const std::string exporter = "export --data-dir " + dir.path() + " ";
  for (const std::string args : {"--to 5", "--limit 5", "--after 4 --to 5", "--after 4 --limit 1",
                                 "--after 2 --to 7 --limit 3", ""}) {
    SCOPED_TRACE(args);
    testing::ProcessResult r = RunLedgerctl(exporter + args, /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 65) << r.out;
    EXPECT_NE(r.out.find("position 6"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("forged"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("\"sequence\":\"00000000000000000005\""), std::string::npos) << r.out;
  }
  EXPECT_EQ(RunLedgerctl("verify --data-dir " + dir.path() + " --to 5").exit_code, 65);
  // A range ending before it is linked by event 5's prev_hash, which is intact.
  testing::ProcessResult before = RunLedgerctl(exporter + "--to 4");
  EXPECT_EQ(before.exit_code, 0);
  EXPECT_EQ(Lines(before.out).size(), 4u);
  EXPECT_EQ(Lines(RunLedgerctl(exporter + "--after 1 --limit 3").out).size(), 3u);
}

// The log's last event rewritten and re-sealed: no successor shows it, and the open compared only
// the chain head record's position with it. Export wrote the forged line with exit 0; the open
// now compares the record's hash with the event's stored hash and refuses the store (65), before
// anything is written.
TEST(ExportCliTest, AReSealedHeadEventFailsWithoutWritingIt) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 4, 2); }
  testing::RewriteStoredEvent(dir.path(), 8, /*reseal=*/true,
                              [](Event* event) { event->data = "{\"m\":\"forged\"}"; });
  for (const std::string args : {"", "--after 7", "--to 8"}) {
    SCOPED_TRACE(args);
    testing::ProcessResult r =
        RunLedgerctl("export --data-dir " + dir.path() + " " + args, /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 65) << r.out;
    EXPECT_NE(r.out.find("differs from the chain head record"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("forged"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find(MarkerFor(1)), std::string::npos) << r.out;
  }
  testing::ProcessResult verify =
      RunLedgerctl("verify --data-dir " + dir.path(), /*keep_stderr=*/true);
  EXPECT_EQ(verify.exit_code, 65) << verify.out;
  EXPECT_NE(verify.out.find("FAILED at position 8: its hash "), std::string::npos) << verify.out;
  EXPECT_NE(verify.out.find("differs from the chain head record"), std::string::npos)
      << verify.out;
}

// The log's last event has no successor to vouch for it: it is written (the chain head record
// is ledgerd's, and verify's, check of it).
TEST(ExportTest, TheHeadEventIsWrittenAndARangeBeforeItLinksToItsSuccessor) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 3, 2); }
  std::unique_ptr<Ledger> ledger;
  ASSERT_TRUE(OpenReadOnly({dir.path(), {}, true}, &ledger).ok());
  for (uint64_t to : {0, 6, 5, 1}) {
    SCOPED_TRACE(to);
    ExportOptions options;
    options.to = Position(to);
    std::ostringstream out;
    uint64_t exported = 0;
    Status s = ExportCloudEvents(*ledger, options, out, &exported);
    ASSERT_TRUE(s.ok()) << s.ToString();
    const uint64_t expected = to == 0 ? 6 : to;
    EXPECT_EQ(exported, expected);
    std::vector<std::string> lines = Lines(out.str());
    ASSERT_EQ(lines.size(), expected);
    rapidjson::Document doc;
    doc.Parse(lines.back().c_str());
    EXPECT_EQ(doc["data"]["m"].GetString(), MarkerFor(expected));
  }
}

TEST(ExportCliTest, WritesNdjsonToStdout) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 4, 2); }
  testing::ProcessResult all = RunLedgerctl("export --data-dir " + dir.path());
  EXPECT_EQ(all.exit_code, 0);
  EXPECT_EQ(Lines(all.out).size(), 8u);
  testing::ProcessResult some =
      RunLedgerctl("export --data-dir " + dir.path() + " --after 2 --limit 3");
  EXPECT_EQ(some.exit_code, 0);
  std::vector<std::string> lines = Lines(some.out);
  ASSERT_EQ(lines.size(), 3u);
  for (const std::string& line : lines) {
    EXPECT_TRUE(testing::JsonMatchesSchemaFile("cloudevent.schema.json", line));
  }
  EXPECT_EQ(RunLedgerctl("export --data-dir " + dir.Sub("missing")).exit_code, 74);
}

// Positions are decimal: CLI11 alone would read "-1" as 2^64 - 1 (an empty export, exit 0) and
// "010" as 8. An empty CloudEvents source would make every line invalid.
TEST(ExportCliTest, BadNumbersAndAnEmptySourceAreUsageErrors) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 4, 2); }
  for (const std::string args : {"--after -1", "--after 010", "--after 0x2", "--limit -1",
                                 "--limit 1e3", "--source ''"}) {
    SCOPED_TRACE(args);
    testing::ProcessResult r = RunLedgerctl("export --data-dir " + dir.path() + " " + args);
    EXPECT_EQ(r.exit_code, 64) << r.out;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  for (const std::string args : {"--from -1", "--from 010 --to 012", "--to -1"}) {
    SCOPED_TRACE(args);
    EXPECT_EQ(RunLedgerctl("verify --data-dir " + dir.path() + " " + args).exit_code, 64);
  }
  EXPECT_EQ(testing::RunLedgerctlIn(dir.path(),
                                    "LEDGER_JWT_HS256_SECRET=0123456789abcdef0123456789abcdef",
                                    "token --sub u1 --ttl -5")
                .exit_code,
            64);
  testing::ProcessResult ok = RunLedgerctl("export --data-dir " + dir.path() + " --after 7");
  EXPECT_EQ(ok.exit_code, 0);
  EXPECT_EQ(Lines(ok.out).size(), 1u);
}

// CloudEvents `source` is a URI-reference. --source checked only its length: a non-UTF-8 byte
// made every line invalid JSON, a space or a control character every line an invalid
// CloudEvent. RFC 3986's characters only now (64, nothing written).
TEST(ExportCliTest, ASourceThatIsNotAUriReferenceIsAUsageError) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 2, 1); }
  const std::string exporter = "export -q --data-dir " + dir.path() + " --source ";
  for (const std::string source : {"\"$(printf '/a\\001b')\"", "\"$(printf '/a\\377b')\"",
                                   "'/l\xc3\xa9" "dgerd'", "'/ledger d'", "'/a\"b'", "'/a\\b'",
                                   "'/a{b}'", "'/a<b>'"}) {
    SCOPED_TRACE(source);
    testing::ProcessResult r = RunLedgerctl(exporter + source);
    EXPECT_EQ(r.exit_code, 64) << r.out;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  for (const std::string source : {"urn:ledgerd:prod", "https://billing.example.com/ledgerd?a=1#x",
                                   "/ledgerd/eu-1%20b"}) {
    SCOPED_TRACE(source);
    testing::ProcessResult r = RunLedgerctl(exporter + "'" + source + "'");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    const std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 2u);
    for (const std::string& line : lines) {
      rapidjson::Document doc;
      doc.Parse(line.c_str());
      ASSERT_FALSE(doc.HasParseError()) << line;
      EXPECT_EQ(std::string(doc["source"].GetString()), source);
    }
  }
}

// --to bounds the export (to a live ledgerd's /api/v1/audit/head, which counts only synced
// groups, where the read-only open also replays a group written and not yet synced).
TEST(ExportCliTest, ToIsTheLastPositionExported) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 4, 2); }
  const std::string exporter = "export --data-dir " + dir.path() + " ";
  testing::ProcessResult upto = RunLedgerctl(exporter + "--to 5");
  EXPECT_EQ(upto.exit_code, 0);
  std::vector<std::string> lines = Lines(upto.out);
  ASSERT_EQ(lines.size(), 5u);
  rapidjson::Document last;
  last.Parse(lines.back().c_str());
  EXPECT_EQ(std::string(last["sequence"].GetString()), "00000000000000000005");
  EXPECT_EQ(Lines(RunLedgerctl(exporter + "--after 2 --to 5").out).size(), 3u);
  EXPECT_EQ(Lines(RunLedgerctl(exporter + "--after 2 --to 7 --limit 2").out).size(), 2u);
  EXPECT_EQ(Lines(RunLedgerctl(exporter + "--to 8").out).size(), 8u);
  testing::ProcessResult none = RunLedgerctl(exporter + "--after 5 --to 5");
  EXPECT_EQ(none.exit_code, 0);
  EXPECT_TRUE(none.out.empty()) << none.out;
  for (const std::string args : {"--to 9", "--after 6 --to 5", "--to 010", "--to -1"}) {
    SCOPED_TRACE(args);
    testing::ProcessResult r = RunLedgerctl(exporter + args);
    EXPECT_EQ(r.exit_code, 64) << r.out;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST(ExportCliTest, TheDataDirFlagWinsOverTheEnvironment) {
  TempDir dir;
  { WriteMarkedLog(OpenTestLedger(dir.path()).get(), 4, 2); }
  ::setenv("LEDGER_DATA_DIR", dir.Sub("missing").c_str(), 1);
  testing::ProcessResult flag_after = RunLedgerctl("export --data-dir " + dir.path());
  testing::ProcessResult flag_before = RunLedgerctl("--data-dir " + dir.path() + " export");
  testing::ProcessResult env_only = RunLedgerctl("export");
  ::setenv("LEDGER_DATA_DIR", dir.path().c_str(), 1);
  testing::ProcessResult env_store = RunLedgerctl("export");
  ::unsetenv("LEDGER_DATA_DIR");
  EXPECT_EQ(flag_after.exit_code, 0);
  EXPECT_EQ(Lines(flag_after.out).size(), 8u);
  EXPECT_EQ(flag_before.exit_code, 0);
  EXPECT_EQ(Lines(flag_before.out).size(), 8u);
  EXPECT_EQ(env_only.exit_code, 74);  // without a flag the variable is used
  EXPECT_EQ(env_store.exit_code, 0);
  EXPECT_EQ(Lines(env_store.out).size(), 8u);
}

}  // namespace
}  // namespace ledger::tools
