#include "http/base64.h"

#include <gtest/gtest.h>

namespace ledger::http {
namespace {

TEST(Base64Test, UrlRoundTripsEveryLength) {
  std::string bytes;
  for (int i = 0; i < 70; ++i) {
    std::string decoded;
    std::string encoded = Base64UrlEncode(bytes);
    EXPECT_EQ(encoded.find('='), std::string::npos);
    ASSERT_TRUE(Base64UrlDecode(encoded, &decoded)) << encoded;
    EXPECT_EQ(decoded, bytes);
    bytes.push_back(static_cast<char>(i * 37 + 250));
  }
}

TEST(Base64Test, KnownVectors) {
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  std::string out;
  ASSERT_TRUE(Base64Decode("Zm8=", &out));
  EXPECT_EQ(out, "fo");
  ASSERT_TRUE(Base64Decode("Zm8", &out));
  EXPECT_EQ(out, "fo");
  ASSERT_TRUE(Base64UrlDecode("-_8", &out));
  EXPECT_EQ(out, "\xfb\xff");
}

TEST(Base64Test, RejectsMalformed) {
  std::string out;
  EXPECT_FALSE(Base64UrlDecode("ab+c", &out));  // standard alphabet in url mode
  EXPECT_FALSE(Base64UrlDecode("ab/c", &out));
  EXPECT_FALSE(Base64Decode("ab-c", &out));
  EXPECT_FALSE(Base64UrlDecode("a", &out));     // impossible length
  EXPECT_FALSE(Base64UrlDecode("ab c", &out));  // whitespace
  EXPECT_FALSE(Base64UrlDecode("Zm9=", &out));  // non-zero trailing bits
  EXPECT_FALSE(Base64Decode("Zm8==", &out));    // wrong padding
  EXPECT_FALSE(Base64UrlDecode("Zm8=a", &out));
}

}  // namespace
}  // namespace ledger::http
