// ChunkedFraming: how HttpServer (http/server.cc) follows a chunked request body's framing, on its
// own so that the fuzz target (tests/fuzz) can feed it without a socket: not part of the http API.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ledger::http {

// Follows the bytes of a chunked request body as cpp-httplib reads them and notes whether their
// framing is exact (RFC 9112 §7.1): hex size [;extension] CRLF, data, CRLF, ..., 0 CRLF, trailer
// lines, CRLF. cpp-httplib 0.11.4 takes a chunk not followed by CRLF as the end of the body and
// what follows as the next request: a proxy that frames the body otherwise sees another request.
// It also takes the trailer fields out of what cpp-httplib reads (RFC 9112 §7.1.2): cpp-httplib
// 0.11.4 wants the blank line right after the last chunk and refused a body with trailers (400
// unreadable_body); no route reads one, so they are discarded, as §7.1.2 allows.
class ChunkedFraming {
 public:
  void Reset() { *this = ChunkedFraming(); }
  void Watch() { watching_ = true; }
  bool malformed() const { return malformed_; }

  // Follows the `size` bytes just read at `data` and returns how many of them cpp-httplib gets,
  // moved to the front: all but the trailer field lines.
  size_t Feed(char* data, size_t size) {
    if (!watching_) return size;
    size_t kept = 0;
    for (size_t i = 0; i < size; ++i) {
      if (malformed_) {  // the body is refused (ReadBody): the bytes as they came
        data[kept++] = data[i];
        continue;
      }
      if (state_ == State::kData && size_ > 1) {  // skip the chunk's data but its last byte
        const size_t skip = static_cast<size_t>(std::min<uint64_t>(size_ - 1, size - i));
        size_ -= skip;
        std::memmove(data + kept, data + i, skip);
        kept += skip;
        i += skip - 1;
        continue;
      }
      const char c = data[i];
      const bool trailer_field = state_ == State::kTrailer || state_ == State::kTrailerLf ||
                                 (state_ == State::kTrailerStart && c != '\r' && c != '\n');
      Step(c);
      if (!trailer_field) data[kept++] = c;
    }
    return kept;
  }

 private:
  enum class State { kSize, kSizeBws, kExtension, kSizeLf, kData, kDataCr, kDataLf,
                     kTrailerStart, kTrailer, kTrailerLf, kEndLf, kDone };

  static int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  void Step(char c) {
    switch (state_) {
      case State::kSize:
        if (const int v = HexValue(c); v >= 0 && (size_ >> 56) == 0) {  // leading zeros are fine
          size_ = size_ * 16 + static_cast<uint64_t>(v);
          seen_digit_ = true;
        } else if (seen_digit_ && c == ';') {
          state_ = State::kExtension;
        } else if (seen_digit_ && (c == ' ' || c == '\t')) {
          state_ = State::kSizeBws;
        } else if (seen_digit_ && c == '\r') {
          state_ = State::kSizeLf;
        } else {
          malformed_ = true;
        }
        return;
      case State::kSizeBws:  // blanks may come before an extension's ';' only
        if (c == ';') state_ = State::kExtension;
        else if (c != ' ' && c != '\t') malformed_ = true;
        return;
      case State::kExtension:
        if (c == '\r') state_ = State::kSizeLf;
        else if (c == '\n') malformed_ = true;
        return;
      case State::kSizeLf:
        if (c != '\n') {
          malformed_ = true;
        } else {
          state_ = size_ == 0 ? State::kTrailerStart : State::kData;
        }
        return;
      case State::kData:
        if (--size_ == 0) state_ = State::kDataCr;
        return;
      case State::kDataCr:
        if (c == '\r') state_ = State::kDataLf;
        else malformed_ = true;
        return;
      case State::kDataLf:
        if (c == '\n') {
          state_ = State::kSize;
          seen_digit_ = false;
        } else {
          malformed_ = true;
        }
        return;
      case State::kTrailerStart:
        state_ = c == '\r' ? State::kEndLf : c == '\n' ? State::kDone : State::kTrailer;
        if (state_ == State::kDone) malformed_ = true;
        return;
      case State::kTrailer:
        if (c == '\r') state_ = State::kTrailerLf;
        else if (c == '\n') malformed_ = true;
        return;
      case State::kTrailerLf:
        if (c == '\n') state_ = State::kTrailerStart;
        else malformed_ = true;
        return;
      case State::kEndLf:
        if (c == '\n') state_ = State::kDone;
        else malformed_ = true;
        return;
      case State::kDone:  // the body ended: these bytes are not part of it
        malformed_ = true;
        return;
    }
  }

  bool watching_ = false;
  bool malformed_ = false;
  State state_ = State::kSize;
  uint64_t size_ = 0;
  bool seen_digit_ = false;
};

}  // namespace ledger::http
