#include "tests/support/schema_check.h"

#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/schema.h>
#include <rapidjson/stringbuffer.h>

namespace ledger::testing {

namespace {

// A loaded schema: the SchemaDocument refers to nothing in `source` after construction, but
// keeping both together costs nothing and rules the question out.
struct LoadedSchema {
  rapidjson::Document source;
  std::unique_ptr<rapidjson::SchemaDocument> schema;
  std::string error;  // non-empty when the file could not be loaded
};

const LoadedSchema& Load(const std::string& relative_path) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<LoadedSchema>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[relative_path];
  if (slot) return *slot;
  slot = std::make_unique<LoadedSchema>();
  std::string path = SchemasDir() + "/" + relative_path;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    slot->error = "no schema file " + path;
    return *slot;
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string content = text.str();
  slot->source.Parse(content.data(), content.size());
  if (slot->source.HasParseError()) {
    slot->error = path + ": not JSON at offset " + std::to_string(slot->source.GetErrorOffset()) +
                  ": " + rapidjson::GetParseError_En(slot->source.GetParseError());
    return *slot;
  }
  slot->schema = std::make_unique<rapidjson::SchemaDocument>(slot->source);
  return *slot;
}

std::string PointerString(const rapidjson::Pointer& pointer) {
  rapidjson::StringBuffer buf;
  pointer.StringifyUriFragment(buf);
  return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace

std::string SchemasDir() { return std::string(LEDGER_SOURCE_DIR) + "/schemas"; }

::testing::AssertionResult JsonMatchesSchemaFile(std::string_view schema_path,
                                                 std::string_view json) {
  const LoadedSchema& loaded = Load(std::string(schema_path));
  if (!loaded.error.empty()) return ::testing::AssertionFailure() << loaded.error;
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError()) {
    return ::testing::AssertionFailure()
           << "document is not JSON (" << rapidjson::GetParseError_En(doc.GetParseError())
           << " at offset " << doc.GetErrorOffset() << "): " << json;
  }
  rapidjson::SchemaValidator validator(*loaded.schema);
  if (!doc.Accept(validator)) {
    return ::testing::AssertionFailure()
           << "document does not match " << schema_path << ": keyword '"
           << validator.GetInvalidSchemaKeyword() << "' at schema "
           << PointerString(validator.GetInvalidSchemaPointer()) << ", document "
           << PointerString(validator.GetInvalidDocumentPointer()) << "\n  document: " << json;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult EventDataMatchesSchema(std::string_view type, std::string_view data) {
  if (type.empty() || type.find('/') != std::string_view::npos || type.find("..") != type.npos) {
    return ::testing::AssertionFailure() << "bad event type '" << type << "'";
  }
  std::string path = "events/" + std::string(type) + ".schema.json";
  ::testing::AssertionResult result = JsonMatchesSchemaFile(path, data);
  if (!result) return ::testing::AssertionFailure() << "event " << type << ": " << result.message();
  return result;
}

::testing::AssertionResult EventMatchesSchema(const Event& event) {
  return EventDataMatchesSchema(event.type, event.data);
}

::testing::AssertionResult EventMatchesSchema(const NewEvent& event) {
  return EventDataMatchesSchema(event.type, event.data);
}

::testing::AssertionResult EnvelopeMatchesSchema(const Event& event, std::string_view source) {
  ::testing::AssertionResult envelope =
      JsonMatchesSchemaFile("envelope.schema.json", ToEnvelopeJson(event));
  if (!envelope) return envelope;
  ::testing::AssertionResult cloudevent =
      JsonMatchesSchemaFile("cloudevent.schema.json", ToCloudEventJson(event, source));
  if (!cloudevent) return cloudevent;
  ::testing::AssertionResult claim_check = JsonMatchesSchemaFile(
      "cloudevent.schema.json", ToCloudEventJsonWithDataRef(event, source));
  if (!claim_check) return claim_check;
  return EventMatchesSchema(event);
}

}  // namespace ledger::testing
