#include "http/problem.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

namespace ledger::http {
namespace {

TEST(ProblemTest, CodeToHttpStatus) {
  EXPECT_EQ(HttpStatusFor(Code::kOk), 200);
  EXPECT_EQ(HttpStatusFor(Code::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(Code::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(Code::kPaymentRequired), 402);
  EXPECT_EQ(HttpStatusFor(Code::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(Code::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(Code::kConflict), 409);
  EXPECT_EQ(HttpStatusFor(Code::kPayloadTooLarge), 413);
  EXPECT_EQ(HttpStatusFor(Code::kUnprocessable), 422);
  EXPECT_EQ(HttpStatusFor(Code::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(Code::kBusy), 503);
  EXPECT_EQ(HttpStatusFor(Code::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(Code::kBadGateway), 502);
  EXPECT_EQ(HttpStatusFor(Code::kIOError), 503);
  EXPECT_EQ(HttpStatusFor(Code::kCorruption), 500);
  EXPECT_EQ(HttpStatusFor(Code::kInternal), 500);
}

TEST(ProblemTest, DocumentShape) {
  httplib::Response res;
  WriteProblem(409, "idempotency_key_reused", "the key \"k\" was used with another body", &res);
  EXPECT_EQ(res.status, 409);
  EXPECT_EQ(res.get_header_value("Content-Type"), "application/problem+json");
  rapidjson::Document doc;
  doc.Parse(res.body.c_str());
  ASSERT_FALSE(doc.HasParseError()) << res.body;
  EXPECT_STREQ(doc["type"].GetString(), "urn:ledgerd:problem:idempotency_key_reused");
  EXPECT_STREQ(doc["title"].GetString(), "Conflict");
  EXPECT_EQ(doc["status"].GetInt(), 409);
  EXPECT_STREQ(doc["detail"].GetString(), "the key \"k\" was used with another body");
  EXPECT_STREQ(doc["code"].GetString(), "idempotency_key_reused");
  EXPECT_EQ(doc.MemberCount(), 5u);
}

TEST(ProblemTest, BusyAddsRetryAfter) {
  httplib::Response res;
  WriteStatusProblem(Status::Busy("write queue full"), &res);
  EXPECT_EQ(res.status, 503);
  EXPECT_EQ(res.get_header_value("Retry-After"), "1");
  rapidjson::Document doc;
  doc.Parse(res.body.c_str());
  EXPECT_STREQ(doc["code"].GetString(), "overloaded");

  httplib::Response degraded;
  WriteStatusProblem(Status::Unavailable("storage_degraded", "read-only"), &degraded);
  EXPECT_EQ(degraded.status, 503);
  EXPECT_FALSE(degraded.has_header("Retry-After"));
}

TEST(ProblemTest, CommandResults) {
  CommandResult ok;
  ok.http_status = 201;
  ok.body = R"({"id":"x"})";
  ok.position = Position(42);
  httplib::Response res;
  WriteCommandResult(ok, &res);
  EXPECT_EQ(res.status, 201);
  EXPECT_EQ(res.body, R"({"id":"x"})");
  EXPECT_EQ(res.get_header_value("X-Ledger-Position"), "42");
  EXPECT_EQ(res.get_header_value("Content-Type"), "application/json");
  EXPECT_FALSE(res.has_header("Idempotent-Replayed"));

  ok.replayed = true;
  httplib::Response replay;
  WriteCommandResult(ok, &replay);
  EXPECT_EQ(replay.get_header_value("Idempotent-Replayed"), "true");

  CommandResult conflict;
  conflict.status = Status::Conflict("idempotency_key_reused", "different request");
  httplib::Response res2;
  WriteCommandResult(conflict, &res2);
  EXPECT_EQ(res2.status, 409);
  EXPECT_FALSE(res2.has_header("X-Ledger-Position"));
}

TEST(ProblemTest, PositionHeaderIsReplacedNotDuplicated) {
  httplib::Response res;
  WriteJsonAt(200, "{}", Position(1), &res);
  SetPositionHeader(Position(2), &res);
  EXPECT_EQ(res.get_header_value_count("X-Ledger-Position"), 1u);
  EXPECT_EQ(res.get_header_value("X-Ledger-Position"), "2");
}

TEST(ProblemTest, JsonQuoteEscapes) {
  EXPECT_EQ(JsonQuote("a\"b\\c\n"), R"("a\"b\\c\n")");
}

TEST(ProblemTest, EqualsIgnoreCaseFoldsAsciiLettersOnly) {
  EXPECT_TRUE(EqualsIgnoreCase("Transfer-Encoding", "transfer-ENCODING"));
  EXPECT_TRUE(EqualsIgnoreCase("", ""));
  EXPECT_FALSE(EqualsIgnoreCase("chunked", "chunke"));
  EXPECT_FALSE(EqualsIgnoreCase("chunked", "chunkee"));
  // Only A-Z fold: '@' and '`' are 0x20 apart like 'A' and 'a', and bytes above 0x7f stay as
  // they are.
  EXPECT_FALSE(EqualsIgnoreCase("@", "`"));
  EXPECT_FALSE(EqualsIgnoreCase("[", "{"));
  EXPECT_FALSE(EqualsIgnoreCase("\xc4", "\xe4"));
  EXPECT_TRUE(EqualsIgnoreCase("\xc4", "\xc4"));
}

TEST(ProblemTest, StartsWithIgnoreCase) {
  EXPECT_TRUE(StartsWithIgnoreCase("bEARER abc", "Bearer "));
  EXPECT_TRUE(StartsWithIgnoreCase("Content-Length: 5", "content-length:"));
  EXPECT_TRUE(StartsWithIgnoreCase("x", ""));
  EXPECT_FALSE(StartsWithIgnoreCase("Bear", "Bearer "));
  EXPECT_FALSE(StartsWithIgnoreCase("Basic abc", "Bearer "));
}

}  // namespace
}  // namespace ledger::http
