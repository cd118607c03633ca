#include "projections/json_util.h"

#include <unordered_set>

#include <rapidjson/error/en.h>

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

Status CheckMembers(const rapidjson::Value& v, int depth) {
  if (depth > kJsonDepthMax) {
    return Status::InvalidArgument("invalid_json", "JSON nested too deeply");
  }
  if (v.IsArray()) {
    for (const rapidjson::Value& item : v.GetArray()) {
      LEDGER_RETURN_IF_ERROR(CheckMembers(item, depth + 1));
    }
  } else if (v.IsObject()) {
    std::unordered_set<std::string_view> names;
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
      std::string_view name(it->name.GetString(), it->name.GetStringLength());
      if (!names.insert(name).second) {
        return Status::InvalidArgument("invalid_json",
                                       "duplicate member name '" + Truncated(name) + "'");
      }
      LEDGER_RETURN_IF_ERROR(CheckMembers(it->value, depth + 1));
    }
  }
  return Status::OK();
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t n = Utf8SequenceLength(s, i);
    if (n == 0) return false;
    i += n;
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

Status ParseJsonObject(std::string_view text, rapidjson::Document* doc) {
  constexpr unsigned kFlags = rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;
  doc->Parse<kFlags>(text.data(), text.size());
  if (doc->HasParseError()) {
    return Status::InvalidArgument(
        "invalid_json", std::string("malformed JSON at offset ") +
                            std::to_string(doc->GetErrorOffset()) + ": " +
                            rapidjson::GetParseError_En(doc->GetParseError()));
  }
  if (!doc->IsObject()) {
    return Status::InvalidArgument("invalid_json", "the body must be a JSON object");
  }
  return CheckMembers(*doc, 0);
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
