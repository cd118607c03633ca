// Byte encoding helpers. Every on-disk key and value goes through these; the formats they build
// are written down in FORMAT.md. Integers in keys are big-endian so that byte order equals
// numeric order (a range scan over `events` is a replay in position order).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ledger {

inline void PutFixed64BE(std::string* dst, uint64_t v) {
  char buf[8];
  for (int i = 7; i >= 0; --i) {
    buf[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  dst->append(buf, 8);
}

inline uint64_t DecodeFixed64BE(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

inline void PutFixed32BE(std::string* dst, uint32_t v) {
  char buf[4];
  for (int i = 3; i >= 0; --i) {
    buf[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  dst->append(buf, 4);
}

inline uint32_t DecodeFixed32BE(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

inline std::string EncodePositionKey(uint64_t position) {
  std::string key;
  PutFixed64BE(&key, position);
  return key;
}

// Length-prefixed (u32 BE) byte string.
inline void PutLengthPrefixed(std::string* dst, std::string_view s) {
  PutFixed32BE(dst, static_cast<uint32_t>(s.size()));
  dst->append(s.data(), s.size());
}

// Reads a value written by PutLengthPrefixed from the front of `*input`, advancing it.
inline bool GetLengthPrefixed(std::string_view* input, std::string_view* out) {
  if (input->size() < 4) return false;
  uint32_t n = DecodeFixed32BE(input->data());
  if (input->size() - 4 < n) return false;
  *out = input->substr(4, n);
  input->remove_prefix(4 + n);
  return true;
}

inline bool GetFixed64BE(std::string_view* input, uint64_t* out) {
  if (input->size() < 8) return false;
  *out = DecodeFixed64BE(input->data());
  input->remove_prefix(8);
  return true;
}

}  // namespace ledger
