// Small JSON helpers shared by the projections' parsers: strict parsing of untrusted JSON
// (bounded nesting, UTF-8 validated, duplicate member names rejected) and typed field access that
// turns every mismatch into a Status naming the field.
//
// Thread safety: free functions are pure; an ObjectReader is used by one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/document.h>

#include "events/status.h"

namespace ledger::projections {

// Nesting deeper than this is rejected before anything walks the document.
inline constexpr int kJsonDepthMax = 32;

// True when `s` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool IsValidUtf8(std::string_view s);

// A user id as ledgerd takes one (a JWT `sub`, a Lago external customer id): 1 to
// limits::kUserIdBytesMax bytes of UTF-8 without '/' or control characters -- it is an event
// subject, a part of row keys and quoted in answers.
bool IsValidUserId(std::string_view id);

// Text that people read (a BYOK key's label): well-formed UTF-8 without control characters (C0,
// DEL, C1) or the bidirectional overrides and isolates (U+202A..U+202E, U+2066..U+2069), which
// act on terminals and reorder what is shown around them.
bool IsDisplayText(std::string_view s);
// The same over several lines (an admin's notes): line feeds and tabs are allowed too; a carriage
// return is not (on a terminal it moves back over what the line showed).
bool IsMultilineDisplayText(std::string_view s);

// `s` shortened to at most `bytes_max` bytes (at a character boundary) with invalid UTF-8 bytes
// replaced by '?', for quoting untrusted input in error messages.
std::string Truncated(std::string_view s, size_t bytes_max = 64);

// True when the JSON text `text` holds a low surrogate escape (\uDC00..\uDFFF, hex digits in any
// case) that is not the second half of a pair: when it is false, no string parsed from it decodes
// to something that is not UTF-8. A scan of the raw bytes (memchr for '\\'), so that the parsers
// below walk the decoded strings only for the rare texts that may hold one.
bool MayHoldLoneLowSurrogate(std::string_view text);

// Parses `text` as one JSON object. kInvalidArgument "invalid_json" when it is not JSON (a raw NUL
// byte included), not an object, not valid UTF-8 (its bytes, or a member name or string value as
// its escapes decode: a lone surrogate such as "\udc00"), nested deeper than kJsonDepthMax or has
// an object with a duplicate member name.
Status ParseJsonObject(std::string_view text, rapidjson::Document* doc);
// The same, parsing `*text` in place (it is modified, and the document's strings point into it:
// it must outlive `*doc`). Saves copying every string of a large body into the document.
Status ParseJsonObjectInsitu(std::string* text, rapidjson::Document* doc);

// Written in place of a redacted secret by RedactJsonSecrets.
inline constexpr std::string_view kRedactedValue = "[redacted]";

// Re-serializes the JSON text `raw` compactly, numbers and strings exactly as received, except
// that the value (a scalar or a whole subtree) of every object member whose name `is_secret`
// accepts, at any depth, becomes "[redacted]" (a null stays null). Used to store webhook
// deliveries verbatim without the secrets they may carry. InvalidArgument "malformed_event" when
// `raw` is not well-formed UTF-8 JSON (a decoded lone surrogate escape included).
Status RedactJsonSecrets(std::string_view raw,
                         const std::function<bool(std::string_view)>& is_secret,
                         std::string* out);

// The answer to a webhook delivered again (the same Stripe event id or Lago unique key), from
// the first delivery's stored answer: "duplicate":true and "derived":[] -- the redelivery
// appended nothing, so it derived nothing (Stripe's retry of a delivery was answered
// "derived":["subscription.state_changed.v1"] with the audit head unchanged); the other members
// (event id, type, "ignored", ...) still describe the delivery. `stored_body` as it is when it
// is not a JSON object (never: it is ledgerd's own answer).
std::string DuplicateDeliveryBody(std::string_view stored_body);

// Typed access to the members of one JSON object. `required` means the member must be present
// (for the Nullable forms: present, possibly null). Absent optional members leave `*out`
// untouched. `*given` (optional) tells whether the member was present. Errors are
// kUnprocessable "validation_failed" with "<name>: ..." messages.
class ObjectReader {
 public:
  explicit ObjectReader(const rapidjson::Value& object) : object_(object) {}

  Status String(std::string_view name, bool required, std::string* out, bool* given = nullptr);
  Status NullableString(std::string_view name, bool required, std::optional<std::string>* out,
                        bool* given = nullptr);
  Status Int(std::string_view name, bool required, int64_t* out, bool* given = nullptr);
  Status NullableInt(std::string_view name, bool required, std::optional<int64_t>* out,
                     bool* given = nullptr);
  Status Bool(std::string_view name, bool required, bool* out, bool* given = nullptr);
  Status StringArray(std::string_view name, bool required, std::vector<std::string>* out,
                     bool* given = nullptr);

 private:
  // Null when absent; then an error if required.
  Status Find(std::string_view name, bool required, const rapidjson::Value** value, bool* given);

  const rapidjson::Value& object_;
};

}  // namespace ledger::projections
