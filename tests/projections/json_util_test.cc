// Strict parsing of untrusted JSON (projections/json_util.h): both the copying and the in-situ
// parser accept the same documents and refuse the same ones (not JSON, not an object, invalid
// UTF-8, too deep, duplicate member names in small and in large objects).
#include "projections/json_util.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ledger::projections {
namespace {

// Both parsers on `text`: the same status. `*doc` is the in-situ one: its strings point into
// `*buffer`.
Status ParseBoth(const std::string& text, std::string* buffer, rapidjson::Document* doc) {
  rapidjson::Document copied;
  Status a = ParseJsonObject(text, &copied);
  *buffer = text;
  Status b = ParseJsonObjectInsitu(buffer, doc);
  EXPECT_EQ(a.ok(), b.ok()) << text;
  EXPECT_EQ(a.problem(), b.problem()) << text;
  return b;
}

std::string ObjectWithMembers(int n, bool duplicate_last) {
  std::string text = "{";
  for (int i = 0; i < n; ++i) {
    if (i > 0) text += ",";
    const int name = duplicate_last && i == n - 1 ? 0 : i;
    text += "\"m" + std::to_string(name) + "\":" + std::to_string(i);
  }
  return text + "}";
}

TEST(JsonUtilTest, BothParsersAcceptTheSameObjects) {
  rapidjson::Document doc;
  std::string buffer;
  ASSERT_TRUE(
      ParseBoth(R"({"events":[{"a":"x\"y","b":[1,2,{"c":null}]}],"k":"ключ"})", &buffer, &doc)
          .ok());
  EXPECT_STREQ(doc["events"][0]["a"].GetString(), "x\"y");
  EXPECT_EQ(std::string(doc["k"].GetString()), "ключ");
  ASSERT_TRUE(ParseBoth(ObjectWithMembers(40, false), &buffer, &doc).ok());
  EXPECT_EQ(doc["m39"].GetInt(), 39);
}

TEST(JsonUtilTest, BothParsersRefuseTheSameDocuments) {
  rapidjson::Document doc;
  std::string buffer;
  std::string deep = "{\"a\":";
  for (int i = 0; i < kJsonDepthMax + 2; ++i) deep += "[";
  for (int i = 0; i < kJsonDepthMax + 2; ++i) deep += "]";
  deep += "}";
  const std::vector<std::string> bad = {
      "",
      "{",
      "[]",
      "\"text\"",
      "{\"a\":1} trailing",
      std::string("{\"a\":1}\0{\"b\":2}", 15),    // a NUL, then more
      "{\"a\":\"\xff\"}",                         // invalid UTF-8
      R"({"a":"x\udc00"})",                       // decodes to ED B0 80: not UTF-8
      R"({"\udfff":1})",                          // ... in a member name
      R"({"a":[{"b":"\udc00"}]})",                // ... nested
      R"({"a":"\ud800"})",                        // a lone high surrogate
      R"({"a":1e309})",                           // past a double's range
      R"({"a":[44679223372081e308]})",            // ... read as infinity by RapidJSON 1.1
      R"({"a":1,"a":2})",                         // duplicate, small object
      R"({"x":{"a":1,"b":2,"a":3}})",             // duplicate, nested
      ObjectWithMembers(3, true),                 // duplicate (pairwise check)
      ObjectWithMembers(17, true),                // duplicate (hash set check)
      "{\"list\":[" + ObjectWithMembers(30, true) + "]}",
      deep,
  };
  for (const std::string& text : bad) {
    Status s = ParseBoth(text, &buffer, &doc);
    EXPECT_EQ(s.problem(), "invalid_json") << text;
  }
}

// RapidJSON's in-situ stream reads up to the NUL after the text, and its UTF-8 check takes a
// sequence's continuation bytes without looking at them: a text ending in a multi-byte lead byte
// was read, and written back, one to three bytes past its buffer (the fuzz target usage_bodies:
// ASan's heap-buffer-overflow on `{"events":[{"user_id":"alice","sT?-ZZ...:007]\xe5`). Each text
// is its own exactly sized allocation (over 15 bytes: not in the string object itself), so ASan
// sees a read past it.
TEST(JsonUtilTest, TheInSituParserRefusesATruncatedSequenceAtTheEndWithinItsBuffer) {
  for (const char* lead : {"\xc3", "\xe5", "\xe5\x80", "\xf0", "\xf0\x9f\x98"}) {
    for (const std::string prefix : {"{\"events\":[{\"user_id\":\"", "{\"events\":[1,2,3]} "}) {
      std::string text = prefix + lead;
      std::string exact(text.data(), text.size());
      rapidjson::Document doc;
      const Status s = ParseJsonObjectInsitu(&exact, &doc);
      EXPECT_EQ(s.problem(), "invalid_json") << text;
      rapidjson::Document copied;
      EXPECT_EQ(ParseJsonObject(text, &copied).problem(), "invalid_json") << text;
    }
  }
}

TEST(JsonUtilTest, BothParsersTakeASurrogatePairAsOneCharacter) {
  rapidjson::Document doc;
  std::string buffer;
  ASSERT_TRUE(ParseBoth(R"({"\ud83d\ude00":"\ud83d\ude00"})", &buffer, &doc).ok());
  EXPECT_EQ(std::string(doc["\xf0\x9f\x98\x80"].GetString()), "\xf0\x9f\x98\x80");
}

// A webhook's redacted copy is re-serialized from the decoded strings: a lone low surrogate would
// have been written as ED B0 80.
TEST(JsonUtilTest, RedactionRefusesEscapesThatDecodeToNoCharacter) {
  const auto never = [](std::string_view) { return false; };
  std::string out;
  for (const char* raw : {R"({"a":"\udc00"})", R"({"\udc00":1})", R"({"a":{"b":["\udfff"]}})"}) {
    EXPECT_EQ(RedactJsonSecrets(raw, never, &out).problem(), "malformed_event") << raw;
  }
  ASSERT_TRUE(RedactJsonSecrets(R"({"a":"\ud83d\ude00"})", never, &out).ok());
  EXPECT_EQ(out, "{\"a\":\"\xf0\x9f\x98\x80\"}");
}

// The parsers walk the decoded strings only when MayHoldLoneLowSurrogate says the raw text may
// hold a lone low surrogate escape: the scan must see one wherever it is written, and see none in
// what only looks like one.
const std::vector<std::string>& LoneLowSurrogates() {
  static const std::vector<std::string> texts = {
      R"({"a":"\uDC00"})",                   // upper-case hex
      R"({"a":"x\uDfFf"})",                  // mixed case
      R"({"\uDE00":1})",                     // in a member name
      R"({"ok":"\\","\\\udc00":1})",         // an escaped backslash, then a real escape
      R"({"a":"\ud83d\ude00\ude00"})",       // after a pair: the third escape is alone
      R"({"a":"\ud83d\ude00","b":"\udc00"})",
  };
  return texts;
}

const std::vector<std::string>& LookAlikes() {
  static const std::vector<std::string> texts = {
      R"({"a":"\\udc00"})",                  // a backslash and "udc00", no escape
      R"({"\\\\uDC00":"\\\\\\udc00x"})",     // ... after escaped backslashes
      R"({"a":"\ud83d\ude00"})",             // a surrogate pair
      R"({"\uD83D\uDE00":"\\\uD83D\uDE00"})",  // upper case; after an escaped backslash
      R"({"a":"\u00e9\n\"\/","b":"udc00"})",
  };
  return texts;
}

TEST(JsonUtilTest, TheSurrogateScanSeesEveryLoneLowEscapeAndNothingElse) {
  for (const std::string& text : LoneLowSurrogates()) {
    EXPECT_TRUE(MayHoldLoneLowSurrogate(text)) << text;
  }
  for (const std::string& text : LookAlikes()) {
    EXPECT_FALSE(MayHoldLoneLowSurrogate(text)) << text;
  }
  EXPECT_FALSE(MayHoldLoneLowSurrogate(R"({"a":"b","c":[1,{"d":null}]})"));
}

TEST(JsonUtilTest, TheSurrogateScanCannotBeFooled) {
  const auto never = [](std::string_view) { return false; };
  rapidjson::Document doc;
  std::string buffer;
  std::string out;
  for (const std::string& text : LoneLowSurrogates()) {
    EXPECT_EQ(ParseBoth(text, &buffer, &doc).problem(), "invalid_json") << text;
    EXPECT_EQ(RedactJsonSecrets(text, never, &out).problem(), "malformed_event") << text;
  }
  for (const std::string& text : LookAlikes()) {
    EXPECT_TRUE(ParseBoth(text, &buffer, &doc).ok()) << text;
    EXPECT_TRUE(RedactJsonSecrets(text, never, &out).ok()) << text;
  }
  ASSERT_TRUE(ParseBoth(R"({"a":"\\udc00","b":"\uD83D\uDE00"})", &buffer, &doc).ok());
  EXPECT_EQ(std::string(doc["a"].GetString()), "\\udc00");
  EXPECT_EQ(std::string(doc["b"].GetString()), "\xf0\x9f\x98\x80");
}

// IsValidUtf8 skips ASCII eight bytes at a time: what follows, straddles or ends a run is still
// judged byte by byte.
TEST(JsonUtilTest, Utf8IsJudgedAroundAsciiRuns) {
  const std::string run = "abcdefgh";
  for (const std::string& good :
       {std::string(), run, run + run + "xyz", "abcdefg\xc3\xa9" + run, "\xc3\xa9" + run,
        run + "\xf0\x9f\x98\x80" + run, "abcdef\xe2\x9c\x93" + run + "\xf4\x8f\xbf\xbf"}) {
    EXPECT_TRUE(IsValidUtf8(good)) << good;
  }
  for (const std::string& bad :
       {run + run + "\xed\xb0\x80", std::string("abcdefg\xc3"), run + "\xff" + run,
        run + "\xc0\x80", "abcdefg\xe2\x9c" + run, run + "\x80", run + "\xf4\x90\x80\x80" + run}) {
    EXPECT_FALSE(IsValidUtf8(bad)) << bad;
  }
}

TEST(JsonUtilTest, DisplayTextHasNoControlsOrOverrides) {
  for (std::string_view text : {"main", "B\xc3\xbcro \xe2\x80\x94 prod \xe2\x9c\x93", "",
                                "\xe2\x80\xa9", "\xe2\x81\xaa"}) {
    EXPECT_TRUE(IsDisplayText(text)) << text;
  }
  for (std::string_view text :
       {std::string_view("a\0b", 3), std::string_view("\t"), std::string_view("\x1b[2J"),
        std::string_view("\x7f"), std::string_view("\xc2\x80"), std::string_view("\xc2\x9f"),
        std::string_view("\xe2\x80\xaa"), std::string_view("\xe2\x80\xae"),
        std::string_view("\xe2\x81\xa6"), std::string_view("\xe2\x81\xa9"),
        std::string_view("\xff")}) {
    EXPECT_FALSE(IsDisplayText(text)) << testing::PrintToString(text);
  }
}

// Notes: display text over several lines (line feeds and tabs); a carriage return is refused.
TEST(JsonUtilTest, MultilineDisplayTextAllowsLineFeedsAndTabsOnly) {
  for (std::string_view text : {"", "a\nb", "\n\n", "\tx\ty\n", "B\xc3\xbcro\n\xe2\x80\x94"}) {
    EXPECT_TRUE(IsMultilineDisplayText(text)) << testing::PrintToString(text);
  }
  for (std::string_view text :
       {std::string_view("a\0b", 3), std::string_view("a\r\nb"), std::string_view("a\n\x1b[2J"),
        std::string_view("\x7f\n"), std::string_view("\n\xc2\x85"),
        std::string_view("x\n\xe2\x80\xae"), std::string_view("\xe2\n\x80\xae"),
        std::string_view("\n\xff")}) {
    EXPECT_FALSE(IsMultilineDisplayText(text)) << testing::PrintToString(text);
  }
}

}  // namespace
}  // namespace ledger::projections
