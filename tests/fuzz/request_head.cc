// A request head as a worker hands it to cpp-httplib (http/request_head.h, what
// ConnectionStream::TakeHead does with the bytes read), on any bytes a client sends. Every line
// cpp-httplib then reads is the client's line, or its name with a marker whose kept value is the
// line's value, or its `Expect: 100-continue` lowercased, or its request line made one cpp-httplib
// parses; the values put back (RestoreLongHeaders) are the ones sent; what followed the head is
// passed on as it came; no line reaches cpp-httplib's 8 KiB limit unless the request is refused
// from its request line alone (431). An incomplete head goes on as it came. Long lines from short
// inputs: a 0xff byte followed by a byte k stands for (k + 1) * 64 'a's.
#include <string>
#include <string_view>

#include "http/limits.h"
#include "http/problem.h"
#include "http/request_head.h"
#include "tests/fuzz/fuzz_target.h"

namespace ledger::fuzz {

namespace {

std::string Expand(std::string_view input) {
  std::string out;
  for (size_t i = 0; i < input.size(); ++i) {
    if (input[i] == '\xff' && i + 1 < input.size()) {
      out.append((static_cast<unsigned char>(input[++i]) + size_t{1}) * 64, 'a');
    } else {
      out.push_back(input[i]);
    }
  }
  return out;
}

// The request line alone, ending the head: what a refusal from the request line hands on.
bool IsRequestLineAlone(std::string_view bytes) {
  return bytes.size() >= 3 && bytes.substr(bytes.size() - 3) == "\n\r\n" &&
         bytes.find('\n') == bytes.size() - 3;
}

// A header value as cpp-httplib 0.11.4 reads it (blanks trimmed; a marker has no '%' for it to
// decode), with a long header's kept value put back as RestoreLongHeaders does.
std::string_view RestoredValue(std::string_view line, const http::RewrittenHead& rewritten) {
  const std::string_view value = http::TrimBlanks(line.substr(line.find(':') + 1));
  const auto it = rewritten.long_headers.find(value);
  return it == rewritten.long_headers.end() ? value : http::TrimBlanks(it->second);
}

}  // namespace

int FuzzRequestHead(const uint8_t* data, size_t size) {
  const std::string head = Expand(AsText(data, size));
  const size_t end = http::HeadEnd(head, 0);
  const size_t allowance = http::HeadBytesAllowance(head);
  const http::RewrittenHead rewritten = http::RewriteRequestHead(head, end, allowance);
  const std::string& bytes = rewritten.bytes;
  LEDGER_FUZZ_CHECK(rewritten.long_headers.size() <= http::kLongHeadersMax + 1);
  if (end == std::string::npos && head.size() <= allowance) {  // incomplete: as it came
    LEDGER_FUZZ_CHECK(bytes == head && !rewritten.head_too_large && !rewritten.malformed_header);
    LEDGER_FUZZ_CHECK(rewritten.long_headers.empty());
    return 0;
  }
  if (rewritten.head_too_large) {
    LEDGER_FUZZ_CHECK(!rewritten.head_too_large_detail.empty());
    LEDGER_FUZZ_CHECK(IsRequestLineAlone(bytes) ||
                      (bytes == head && head.find('\n') >= http::kHeaderLineBytesMax));
    return 0;
  }
  LEDGER_FUZZ_CHECK(end <= allowance);
  if (head[end + 1] == '\n') {  // a bare-LF blank line: refused from the request line
    LEDGER_FUZZ_CHECK(rewritten.malformed_header && IsRequestLineAlone(bytes));
    return 0;
  }
  // The head's bytes as sent count against the request's rate (the head refused above is not
  // read further).
  LEDGER_FUZZ_CHECK(rewritten.shrunk_by ==
                    (head.size() > bytes.size() ? head.size() - bytes.size() : 0));
  // Line by line, as the rewrite splits the head (at CRLF, through the blank line's).
  const size_t head_end = end + 1;
  size_t at = 0;
  for (size_t line_start = 0; line_start < head_end;) {
    const size_t line_end = head.find("\r\n", line_start);
    LEDGER_FUZZ_CHECK(line_end != std::string::npos);
    const std::string_view line = std::string_view(head).substr(line_start, line_end - line_start);
    const size_t out_end = bytes.find("\r\n", at);
    LEDGER_FUZZ_CHECK(out_end != std::string::npos);
    const std::string_view out = std::string_view(bytes).substr(at, out_end - at);
    const size_t colon = line.find(':');
    if (line_start == 0) {
      // Rewritten only when it is `METHOD SP target SP version`.
      LEDGER_FUZZ_CHECK(out == line || line.find(' ') != line.rfind(' '));
    } else if (out != line) {
      LEDGER_FUZZ_CHECK(colon != std::string_view::npos);
      const std::string_view name = line.substr(0, colon + 1);
      if (out.substr(0, name.size()) == name && out.size() > name.size() + 1 &&
          rewritten.long_headers.count(out.substr(name.size() + 1)) > 0) {
        LEDGER_FUZZ_CHECK(out[name.size()] == ' ');
      } else {  // Expect: 100-continue, lowercased in place
        LEDGER_FUZZ_CHECK(out.size() == line.size() && http::EqualsIgnoreCase(out, line));
        LEDGER_FUZZ_CHECK(http::EqualsIgnoreCase(line.substr(0, colon), "Expect"));
      }
    }
    if (line_start > 0) {
      LEDGER_FUZZ_CHECK(out.size() + 2 <= http::kLibraryHeaderLineBytesMax);
      // What the server reads is what was sent (the name as sent, the value put back). Unless
      // the value sent is one of the markers, which have 16 hex digits drawn by the process: a
      // client cannot know them, but libFuzzer reads them off the comparisons it instruments.
      const std::string_view sent =
          colon == std::string_view::npos ? line : http::TrimBlanks(line.substr(colon + 1));
      if (colon != std::string_view::npos && out.find(':') == colon &&
          rewritten.long_headers.count(sent) == 0) {
        const std::string_view read = RestoredValue(out, rewritten);
        LEDGER_FUZZ_CHECK(read == sent || (out != line && http::EqualsIgnoreCase(read, sent)));
      }
    }
    at = out_end + 2;
    line_start = line_end + 2;
  }
  // Then the blank line and whatever followed it, as they came.
  LEDGER_FUZZ_CHECK(std::string_view(bytes).substr(at) == std::string_view(head).substr(head_end));
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzRequestHead)
