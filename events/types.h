// Strong types for positions and hashes. Positions are 1-based, gap-free and global: position 0
// means "before the first event".
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

namespace ledger {

template <typename T, typename Tag>
class StrongType {
 public:
  constexpr StrongType() = default;
  constexpr explicit StrongType(T value) : value_(value) {}
  constexpr T value() const { return value_; }
  constexpr auto operator<=>(const StrongType&) const = default;

 private:
  T value_{};
};

struct PositionTag {};
using Position = StrongType<uint64_t, PositionTag>;

constexpr Position Next(Position p) { return Position(p.value() + 1); }

// SHA-256 digest. The chain's genesis "previous hash" is all zeroes.
using Hash = std::array<uint8_t, 32>;

std::string HexEncode(std::string_view bytes);
inline std::string HexEncode(const Hash& hash) {
  return HexEncode(std::string_view(reinterpret_cast<const char*>(hash.data()), hash.size()));
}
// Returns false when `hex` is not exactly 64 lowercase/uppercase hex digits.
bool HexDecodeHash(std::string_view hex, Hash* out);

Hash Sha256(std::string_view bytes);
Hash Sha256(std::string_view a, std::string_view b);
std::string HmacSha256(std::string_view key, std::string_view message);  // raw 32 bytes
// Constant-time comparison of two byte strings of equal length (false when lengths differ).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace ledger
