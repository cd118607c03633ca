// Sha256 and HmacSha256 (events/types.cc) against published test vectors and against OpenSSL's
// own one-shot HMAC for every key length around the block size.
#include <gtest/gtest.h>
#include <openssl/hmac.h>

#include <string>

#include "events/types.h"

namespace ledger {
namespace {

std::string HexOf(const Hash& h) {
  return HexEncode(std::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
}

std::string Repeat(char c, size_t n) { return std::string(n, c); }

TEST(DigestTest, Sha256MatchesFips180Vectors) {
  EXPECT_EQ(HexOf(Sha256("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexOf(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexOf(Sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // The two-part form hashes the concatenation.
  EXPECT_EQ(Sha256("ab", "c"), Sha256("abc"));
  EXPECT_EQ(Sha256("", "abc"), Sha256("abc"));
}

// RFC 4231 section 4: test cases 1, 2, 3, 4, 6 and 7 (5 truncates the output).
TEST(DigestTest, HmacSha256MatchesRfc4231) {
  struct Case {
    std::string key, data, hex;
  };
  std::string key4;
  for (int i = 1; i <= 25; ++i) key4.push_back(static_cast<char>(i));
  const Case cases[] = {
      {Repeat('\x0b', 20), "Hi There",
       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
      {"Jefe", "what do ya want for nothing?",
       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
      {Repeat('\xaa', 20), Repeat('\xdd', 50),
       "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
      {key4, Repeat('\xcd', 50),
       "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
      {Repeat('\xaa', 131), "Test Using Larger Than Block-Size Key - Hash Key First",
       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
      {Repeat('\xaa', 131),
       "This is a test using a larger than block-size key and a larger than block-size data. "
       "The key needs to be hashed before being used by the HMAC algorithm.",
       "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(HexEncode(HmacSha256(c.key, c.data)), c.hex) << "key of " << c.key.size();
  }
}

TEST(DigestTest, HmacSha256AgreesWithOpenSslForEveryKeyLength) {
  const std::string message = "t=1700000000.{\"id\":\"evt_1\"}";
  for (size_t n = 0; n <= 130; ++n) {
    std::string key;
    for (size_t i = 0; i < n; ++i) key.push_back(static_cast<char>(i * 7 + 3));
    unsigned char expected[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(message.data()), message.size(), expected, &len);
    EXPECT_EQ(HmacSha256(key, message), std::string(reinterpret_cast<char*>(expected), len))
        << "key of " << n << " bytes";
  }
}

}  // namespace
}  // namespace ledger
