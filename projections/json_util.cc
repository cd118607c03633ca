#include "projections/json_util.h"

#include <cmath>
#include <cstring>
#include <unordered_set>

#include <rapidjson/error/en.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "projections/limits.h"

namespace ledger::projections {

namespace {

Status Invalid(std::string_view name, std::string_view what) {
  return Status::Make(Code::kUnprocessable, "validation_failed",
                      std::string(name) + ": " + std::string(what));
}

// Length of the UTF-8 sequence at s[i], or 0 when it is malformed.
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t min = 0, cp = 0;
  if ((c & 0xe0) == 0xc0) {
    n = 2, min = 0x80, cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3, min = 0x800, cp = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4, min = 0x10000, cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

// The parser validates the body's bytes, not what its escapes decode to: RapidJSON refuses a lone
// high surrogate (\ud800) but decodes a lone low one (\udc00) to ED B0 80, which is not UTF-8
// and would be copied as it is into events, Kafka and Lago.
Status CheckString(const rapidjson::Value& s) {
  if (IsValidUtf8(std::string_view(s.GetString(), s.GetStringLength()))) return Status::OK();
  return Status::InvalidArgument("invalid_json",
                                 "malformed JSON: a string escape is not a Unicode character "
                                 "(a lone surrogate)");
}

// `check_strings`: the text may hold a lone low surrogate escape (MayHoldLoneLowSurrogate).
Status CheckMembers(const rapidjson::Value& v, int depth, bool check_strings) {
  if (depth > kJsonDepthMax) {
    return Status::InvalidArgument("invalid_json", "JSON nested too deeply");
  }
  if (v.IsString()) return check_strings ? CheckString(v) : Status::OK();
  // RapidJSON 1.1 reads some numbers past a double's range (44679223372081e308) as infinity
  // where it refuses others (1e309): no writer writes one back, so a re-serialized value (usage
  // metadata) stopped there and the log got `{"tokens":`. Refused as the others are.
  if (v.IsDouble() && !std::isfinite(v.GetDouble())) {
    return Status::InvalidArgument("invalid_json", "malformed JSON: a number out of range");
  }
  if (v.IsArray()) {
    for (const rapidjson::Value& item : v.GetArray()) {
      LEDGER_RETURN_IF_ERROR(CheckMembers(item, depth + 1, check_strings));
    }
  } else if (v.IsObject()) {
    // Small objects (a batch body holds a thousand) are checked pairwise: a hash set per object
    // cost an allocation per member.
    constexpr rapidjson::SizeType kPairwiseMembersMax = 16;
    const bool pairwise = v.MemberCount() <= kPairwiseMembersMax;
    std::unordered_set<std::string_view> names;
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
      std::string_view name(it->name.GetString(), it->name.GetStringLength());
      bool duplicate = false;
      if (pairwise) {
        for (auto earlier = v.MemberBegin(); earlier != it && !duplicate; ++earlier) {
          duplicate = name == std::string_view(earlier->name.GetString(),
                                               earlier->name.GetStringLength());
        }
      } else {
        duplicate = !names.insert(name).second;
      }
      if (check_strings) LEDGER_RETURN_IF_ERROR(CheckString(it->name));
      if (duplicate) {
        return Status::InvalidArgument("invalid_json",
                                       "duplicate member name '" + Truncated(name) + "'");
      }
      LEDGER_RETURN_IF_ERROR(CheckMembers(it->value, depth + 1, check_strings));
    }
  }
  return Status::OK();
}

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// SAX filter: copies the document to a Writer, numbers as their source text, and writes
// "[redacted]" in place of the value (scalar or whole subtree) of any secret-named member.
class RedactingHandler {
 public:
  RedactingHandler(JsonWriter* writer, const std::function<bool(std::string_view)>& is_secret,
                   bool check_strings)
      : w_(writer), is_secret_(is_secret), check_strings_(check_strings) {}

  bool Null() { return Scalar([&] { return w_->Null(); }, /*is_null=*/true); }
  bool Bool(bool b) { return Scalar([&] { return w_->Bool(b); }); }
  bool Int(int) { return false; }  // numbers arrive as RawNumber (kParseNumbersAsStringsFlag)
  bool Uint(unsigned) { return false; }
  bool Int64(int64_t) { return false; }
  bool Uint64(uint64_t) { return false; }
  bool Double(double) { return false; }
  bool RawNumber(const char* str, rapidjson::SizeType length, bool) {
    return Scalar([&] { return w_->RawValue(str, length, rapidjson::kNumberType); });
  }
  // A decoded string that is not UTF-8 (a lone surrogate escape, see CheckString) stops the parse.
  bool String(const char* str, rapidjson::SizeType length, bool) {
    if (!Decoded(str, length)) return false;
    return Scalar([&] { return w_->String(str, length); });
  }
  bool StartObject() { return Open([&] { return w_->StartObject(); }); }
  bool Key(const char* str, rapidjson::SizeType length, bool) {
    if (!Decoded(str, length)) return false;
    if (skip_depth_ > 0) return true;
    redact_next_ = is_secret_(std::string_view(str, length));
    return w_->Key(str, length);
  }
  bool EndObject(rapidjson::SizeType) { return Close([&] { return w_->EndObject(); }); }
  bool StartArray() { return Open([&] { return w_->StartArray(); }); }
  bool EndArray(rapidjson::SizeType) { return Close([&] { return w_->EndArray(); }); }

 private:
  bool Decoded(const char* str, rapidjson::SizeType length) const {
    return !check_strings_ || IsValidUtf8(std::string_view(str, length));
  }
  bool Redacted() {
    redact_next_ = false;
    return w_->String(kRedactedValue.data(),
                      static_cast<rapidjson::SizeType>(kRedactedValue.size()));
  }
  template <typename F>
  bool Scalar(F write, bool is_null = false) {
    if (skip_depth_ > 0) return true;
    if (redact_next_ && !is_null) return Redacted();
    redact_next_ = false;
    return write();
  }
  template <typename F>
  bool Open(F write) {
    if (skip_depth_ > 0) {
      ++skip_depth_;
      return true;
    }
    if (redact_next_) {
      skip_depth_ = 1;
      return Redacted();
    }
    return write();
  }
  template <typename F>
  bool Close(F write) {
    if (skip_depth_ > 0) {
      --skip_depth_;
      return true;
    }
    return write();
  }

  JsonWriter* w_;
  const std::function<bool(std::string_view)>& is_secret_;
  const bool check_strings_;  // MayHoldLoneLowSurrogate(raw)
  bool redact_next_ = false;
  int skip_depth_ = 0;
};

}  // namespace

std::string DuplicateDeliveryBody(std::string_view stored_body) {
  rapidjson::Document doc;
  doc.Parse(stored_body.data(), stored_body.size());
  if (doc.HasParseError() || !doc.IsObject()) return std::string(stored_body);
  for (auto& m : doc.GetObject()) {
    const std::string_view name(m.name.GetString(), m.name.GetStringLength());
    if (name == "duplicate") m.value.SetBool(true);
    if (name == "derived") m.value.SetArray();
  }
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  doc.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

Status RedactJsonSecrets(std::string_view raw,
                         const std::function<bool(std::string_view)>& is_secret,
                         std::string* out) {
  rapidjson::StringBuffer buf;
  JsonWriter writer(buf);
  RedactingHandler handler(&writer, is_secret, MayHoldLoneLowSurrogate(raw));
  rapidjson::Reader reader;
  rapidjson::MemoryStream stream(raw.data(), raw.size());
  constexpr unsigned kFlags = rapidjson::kParseValidateEncodingFlag |
                              rapidjson::kParseIterativeFlag |
                              rapidjson::kParseNumbersAsStringsFlag;
  rapidjson::ParseResult result = reader.Parse<kFlags>(stream, handler);
  if (!result) {
    return Status::InvalidArgument("malformed_event",
                                   std::string("not JSON at offset ") +
                                       std::to_string(result.Offset()) + ": " +
                                       rapidjson::GetParseError_En(result.Code()));
  }
  out->assign(buf.GetString(), buf.GetSize());
  return Status::OK();
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (i + sizeof(uint64_t) <= s.size()) {  // ASCII, eight bytes at a time
      uint64_t word;
      std::memcpy(&word, s.data() + i, sizeof word);
      if ((word & 0x8080808080808080ull) == 0) {
        i += sizeof word;
        continue;
      }
    }
    size_t n = Utf8SequenceLength(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// The parser validates the bytes themselves and refuses a high surrogate escape not followed by
// a low one, so a lone low one is the only escape that decodes to no character. Every backslash
// of valid JSON starts an escape or is the escaped character of \\: they are taken in pairs.
bool MayHoldLoneLowSurrogate(std::string_view text) {
  const auto hex_at = [&](size_t k, std::string_view digits) {
    return k < text.size() && digits.find(text[k]) != std::string_view::npos;
  };
  size_t pair_low = std::string_view::npos;  // where a high surrogate escape's low half starts
  for (size_t i = 0; i < text.size();) {
    const void* found = std::memchr(text.data() + i, '\\', text.size() - i);
    if (found == nullptr) break;
    const size_t at = static_cast<size_t>(static_cast<const char*>(found) - text.data());
    if (at + 1 < text.size() && text[at + 1] == 'u' && hex_at(at + 2, "dD")) {
      if (hex_at(at + 3, "89abAB")) pair_low = at + 6;
      if (hex_at(at + 3, "cdefCDEF") && at != pair_low) return true;
    }
    i = at + 2;  // past the escaped character: \\udc00 is a backslash and "udc00"
  }
  return false;
}

bool IsValidUserId(std::string_view id) {
  if (id.empty() || id.size() > limits::kUserIdBytesMax) return false;
  for (char ch : id) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '/' || u < 0x20 || u == 0x7f) return false;
  }
  return IsValidUtf8(id);
}

bool IsDisplayText(std::string_view s) {
  if (!IsValidUtf8(s)) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    if (u < 0x20 || u == 0x7f) return false;
    const auto next = i + 1 < s.size() ? static_cast<unsigned char>(s[i + 1]) : 0;
    if (u == 0xc2 && next >= 0x80 && next <= 0x9f) return false;  // U+0080..U+009F
    if (u == 0xe2 && i + 2 < s.size()) {
      const auto last = static_cast<unsigned char>(s[i + 2]);
      if (next == 0x80 && last >= 0xaa && last <= 0xae) return false;  // U+202A..U+202E
      if (next == 0x81 && last >= 0xa6 && last <= 0xa9) return false;  // U+2066..U+2069
    }
  }
  return true;
}

bool IsMultilineDisplayText(std::string_view s) {
  // '\n' and '\t' are never part of a multi-byte sequence: the pieces between them are checked
  // as they are.
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i < s.size() && s[i] != '\n' && s[i] != '\t') continue;
    if (!IsDisplayText(s.substr(start, i - start))) return false;
    start = i + 1;
  }
  return true;
}

std::string Truncated(std::string_view s, size_t bytes_max) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = Utf8SequenceLength(s, i);
    std::string_view piece = n == 0 ? std::string_view("?") : s.substr(i, n);
    if (out.size() + piece.size() > bytes_max) break;
    out.append(piece);
    i += n == 0 ? 1 : n;
  }
  if (i < s.size()) {
    // Mark the cut so that a shortened value is not mistaken for the whole one.
    while (!out.empty() && out.size() + 3 > bytes_max) {
      while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xc0) == 0x80) {
        out.pop_back();
      }
      if (!out.empty()) out.pop_back();
    }
    out += "...";
  }
  return out;
}

namespace {

// RapidJSON's streams take a NUL byte for the end of the input: without this, "{...}\0garbage"
// would parse as "{...}". A raw NUL is never JSON (control characters must be escaped).
Status RefuseNul(std::string_view text) {
  if (text.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("invalid_json", "malformed JSON: a NUL byte");
  }
  return Status::OK();
}

Status CheckParsedObject(const rapidjson::Document& doc, bool check_strings) {
  if (doc.HasParseError()) {
    return Status::InvalidArgument(
        "invalid_json", std::string("malformed JSON at offset ") +
                            std::to_string(doc.GetErrorOffset()) + ": " +
                            rapidjson::GetParseError_En(doc.GetParseError()));
  }
  if (!doc.IsObject()) {
    return Status::InvalidArgument("invalid_json", "the body must be a JSON object");
  }
  return CheckMembers(doc, 0, check_strings);
}

}  // namespace

Status ParseJsonObjectInsitu(std::string* text, rapidjson::Document* doc) {
  constexpr unsigned kFlags = rapidjson::kParseValidateEncodingFlag |
                              rapidjson::kParseIterativeFlag | rapidjson::kParseInsituFlag;
  LEDGER_RETURN_IF_ERROR(RefuseNul(*text));
  // The in-situ stream has no end but the NUL after the text, and RapidJSON's UTF-8 check takes a
  // sequence's continuation bytes without looking at them: a text ending in a lead byte
  // (`{"a":"\xe5`) was read, and written back, up to three bytes past its buffer. Invalid UTF-8
  // is refused first, as the parse would refuse it (the copying parse's stream ends at the size).
  if (!IsValidUtf8(*text)) {
    return Status::InvalidArgument("invalid_json", "malformed JSON: invalid UTF-8");
  }
  const bool check_strings = MayHoldLoneLowSurrogate(*text);  // before the parse rewrites it
  doc->ParseInsitu<kFlags>(text->data());
  return CheckParsedObject(*doc, check_strings);
}

Status ParseJsonObject(std::string_view text, rapidjson::Document* doc) {
  constexpr unsigned kFlags =
      rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;
  LEDGER_RETURN_IF_ERROR(RefuseNul(text));
  doc->Parse<kFlags>(text.data(), text.size());
  return CheckParsedObject(*doc, MayHoldLoneLowSurrogate(text));
}

Status ObjectReader::Find(std::string_view name, bool required, const rapidjson::Value** value,
                          bool* given) {
  auto it = object_.FindMember(
      rapidjson::Value(rapidjson::StringRef(name.data(), name.size())));
  const bool present = it != object_.MemberEnd();
  if (given != nullptr) *given = present;
  *value = present ? &it->value : nullptr;
  if (!present && required) return Invalid(name, "required");
  return Status::OK();
}

Status ObjectReader::String(std::string_view name, bool required, std::string* out,
                            bool* given) {
  const rapidjson::Value* v = nullptr;
  LEDGER_RETURN_IF_ERROR(Find(name, required, &v, given));
  if (v == nullptr) return Status::OK();
  if (!v->IsString()) return Invalid(name, "must be a string");
  out->assign(v->GetString(), v->GetStringLength());
  return Status::OK();
}

Status ObjectReader::NullableString(std::string_view name, bool required,
                                    std::optional<std::string>* out, bool* given) {
  const rapidjson::Value* v = nullptr;
  LEDGER_RETURN_IF_ERROR(Find(name, required, &v, given));
  if (v == nullptr) return Status::OK();
  if (v->IsNull()) {
    out->reset();
    return Status::OK();
  }
  if (!v->IsString()) return Invalid(name, "must be a string or null");
  out->emplace(v->GetString(), v->GetStringLength());
  return Status::OK();
}

Status ObjectReader::Int(std::string_view name, bool required, int64_t* out, bool* given) {
  const rapidjson::Value* v = nullptr;
  LEDGER_RETURN_IF_ERROR(Find(name, required, &v, given));
  if (v == nullptr) return Status::OK();
  if (!v->IsInt64()) return Invalid(name, "must be an integer");
  *out = v->GetInt64();
  return Status::OK();
}

Status ObjectReader::NullableInt(std::string_view name, bool required,
                                 std::optional<int64_t>* out, bool* given) {
  const rapidjson::Value* v = nullptr;
  LEDGER_RETURN_IF_ERROR(Find(name, required, &v, given));
  if (v == nullptr) return Status::OK();
  if (v->IsNull()) {
    out->reset();
    return Status::OK();
  }
  if (!v->IsInt64()) return Invalid(name, "must be an integer or null");
  *out = v->GetInt64();
  return Status::OK();
}

Status ObjectReader::Bool(std::string_view name, bool required, bool* out, bool* given) {
  const rapidjson::Value* v = nullptr;
  LEDGER_RETURN_IF_ERROR(Find(name, required, &v, given));
  if (v == nullptr) return Status::OK();
  if (!v->IsBool()) return Invalid(name, "must be true or false");
  *out = v->GetBool();
  return Status::OK();
}

Status ObjectReader::StringArray(std::string_view name, bool required,
                                 std::vector<std::string>* out, bool* given) {
  const rapidjson::Value* v = nullptr;
  LEDGER_RETURN_IF_ERROR(Find(name, required, &v, given));
  if (v == nullptr) return Status::OK();
  if (!v->IsArray()) return Invalid(name, "must be an array of strings");
  out->clear();
  out->reserve(v->Size());
  for (const rapidjson::Value& item : v->GetArray()) {
    if (!item.IsString()) return Invalid(name, "must be an array of strings");
    out->emplace_back(item.GetString(), item.GetStringLength());
  }
  return Status::OK();
}

}  // namespace ledger::projections
