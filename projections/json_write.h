// Small helpers for writing JSON with RapidJSON's Writer: string_views, optionals as null, the
// finished text. Shared by the projections' answers and the HTTP routes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace ledger::json {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

inline void String(Writer* w, std::string_view s) {
  w->String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}
inline void Key(Writer* w, std::string_view s) {
  w->Key(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}
inline void OptString(Writer* w, const std::optional<std::string>& s) {
  if (s) {
    String(w, *s);
  } else {
    w->Null();
  }
}
inline void OptInt(Writer* w, const std::optional<int64_t>& v) {
  if (v) {
    w->Int64(*v);
  } else {
    w->Null();
  }
}
// An empty string as null (ids and names not known yet).
inline void NonEmptyOrNull(Writer* w, std::string_view s) {
  if (s.empty()) {
    w->Null();
  } else {
    String(w, s);
  }
}
// A complete JSON object written as it is.
inline void RawObject(Writer* w, std::string_view json) {
  w->RawValue(json.data(), json.size(), rapidjson::kObjectType);
}
inline std::string Text(const rapidjson::StringBuffer& buf) {
  return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace ledger::json
