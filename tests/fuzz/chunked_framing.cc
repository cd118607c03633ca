// A chunked request body's framing as the server follows it (http/chunked_framing.h), on any
// bytes: how the body is split into reads never changes what cpp-httplib gets (the bytes kept,
// trailer fields taken out) nor whether the framing is malformed. The first byte picks the size
// of the reads compared with whole and byte-at-a-time feeding.
#include <string>
#include <string_view>

#include "http/chunked_framing.h"
#include "tests/fuzz/fuzz_target.h"

namespace ledger::fuzz {

namespace {

struct Fed {
  std::string kept;
  bool malformed = false;
};

Fed FeedInReads(std::string_view body, size_t read_bytes) {
  http::ChunkedFraming framing;
  framing.Watch();
  Fed out;
  for (size_t at = 0; at < body.size(); at += read_bytes) {
    std::string read(body.substr(at, read_bytes));
    const size_t kept = framing.Feed(read.data(), read.size());
    LEDGER_FUZZ_CHECK(kept <= read.size());
    out.kept.append(read, 0, kept);
  }
  out.malformed = framing.malformed();
  return out;
}

}  // namespace

int FuzzChunkedFraming(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t read_bytes = data[0] % 16 + 2;
  const std::string_view body = AsText(data + 1, size - 1);
  const Fed whole = FeedInReads(body, body.size() + 1);
  const Fed bytes = FeedInReads(body, 1);
  const Fed reads = FeedInReads(body, read_bytes);
  LEDGER_FUZZ_CHECK(whole.malformed == bytes.malformed && whole.malformed == reads.malformed);
  LEDGER_FUZZ_CHECK(whole.kept == bytes.kept && whole.kept == reads.kept);
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzChunkedFraming)
