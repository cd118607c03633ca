// Lints every JSON Schema under schemas/ for what RapidJSON 1.1's validator actually enforces.
//
// RapidJSON 1.1 implements draft-04 validation and silently ignores everything else: a schema that
// says "const", "format", "if"/"then", a numeric "exclusiveMinimum", a "$ref" it cannot resolve or
// a "pattern" its regex engine cannot compile lets invalid documents pass without a word. So each
// schema file must:
//   - be JSON and declare "$schema": "http://json-schema.org/draft-04/schema#";
//   - validate against the draft-04 meta-schema (keyword value types);
//   - use only the keywords RapidJSON 1.1 implements (plus draft-04's annotations title,
//     description, default and the "definitions" container), at every schema position;
//   - have only local "$ref"s that resolve, with no sibling keywords (draft-04 ignores them);
//   - have boolean exclusiveMinimum/exclusiveMaximum next to minimum/maximum;
//   - have "pattern"s and "patternProperties" names that RapidJSON's regex engine compiles;
//   - list in "required" only names declared in "properties" when additionalProperties is false;
//   - (events/) be named <title>.schema.json.
// The negative controls at the end show that the lint catches each of those mistakes.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/internal/regex.h>
#include <rapidjson/pointer.h>
#include <rapidjson/schema.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "tests/support/schema_check.h"

namespace ledger {
namespace {

using rapidjson::Value;

constexpr char kDraft04[] = "http://json-schema.org/draft-04/schema#";

// The draft-04 meta-schema (http://json-schema.org/draft-04/schema), verbatim.
constexpr char kDraft04MetaSchema[] = R"json({
    "id": "http://json-schema.org/draft-04/schema#",
    "$schema": "http://json-schema.org/draft-04/schema#",
    "description": "Core schema meta-schema",
    "definitions": {
        "schemaArray": { "type": "array", "minItems": 1, "items": { "$ref": "#" } },
        "positiveInteger": { "type": "integer", "minimum": 0 },
        "positiveIntegerDefault0": {
            "allOf": [ { "$ref": "#/definitions/positiveInteger" }, { "default": 0 } ]
        },
        "simpleTypes": {
            "enum": [ "array", "boolean", "integer", "null", "number", "object", "string" ]
        },
        "stringArray": {
            "type": "array", "items": { "type": "string" }, "minItems": 1, "uniqueItems": true
        }
    },
    "type": "object",
    "properties": {
        "id": { "type": "string" },
        "$schema": { "type": "string" },
        "title": { "type": "string" },
        "description": { "type": "string" },
        "default": {},
        "multipleOf": { "type": "number", "minimum": 0, "exclusiveMinimum": true },
        "maximum": { "type": "number" },
        "exclusiveMaximum": { "type": "boolean", "default": false },
        "minimum": { "type": "number" },
        "exclusiveMinimum": { "type": "boolean", "default": false },
        "maxLength": { "$ref": "#/definitions/positiveInteger" },
        "minLength": { "$ref": "#/definitions/positiveIntegerDefault0" },
        "pattern": { "type": "string", "format": "regex" },
        "additionalItems": {
            "anyOf": [ { "type": "boolean" }, { "$ref": "#" } ], "default": {}
        },
        "items": {
            "anyOf": [ { "$ref": "#" }, { "$ref": "#/definitions/schemaArray" } ], "default": {}
        },
        "maxItems": { "$ref": "#/definitions/positiveInteger" },
        "minItems": { "$ref": "#/definitions/positiveIntegerDefault0" },
        "uniqueItems": { "type": "boolean", "default": false },
        "maxProperties": { "$ref": "#/definitions/positiveInteger" },
        "minProperties": { "$ref": "#/definitions/positiveIntegerDefault0" },
        "required": { "$ref": "#/definitions/stringArray" },
        "additionalProperties": {
            "anyOf": [ { "type": "boolean" }, { "$ref": "#" } ], "default": {}
        },
        "definitions": {
            "type": "object", "additionalProperties": { "$ref": "#" }, "default": {}
        },
        "properties": {
            "type": "object", "additionalProperties": { "$ref": "#" }, "default": {}
        },
        "patternProperties": {
            "type": "object", "additionalProperties": { "$ref": "#" }, "default": {}
        },
        "dependencies": {
            "type": "object",
            "additionalProperties": { "anyOf": [ { "$ref": "#" }, { "$ref": "#/definitions/stringArray" } ] }
        },
        "enum": { "type": "array", "minItems": 1, "uniqueItems": true },
        "type": {
            "anyOf": [
                { "$ref": "#/definitions/simpleTypes" },
                {
                    "type": "array", "items": { "$ref": "#/definitions/simpleTypes" },
                    "minItems": 1, "uniqueItems": true
                }
            ]
        },
        "format": { "type": "string" },
        "allOf": { "$ref": "#/definitions/schemaArray" },
        "anyOf": { "$ref": "#/definitions/schemaArray" },
        "oneOf": { "$ref": "#/definitions/schemaArray" },
        "not": { "$ref": "#" }
    },
    "dependencies": {
        "exclusiveMaximum": [ "maximum" ],
        "exclusiveMinimum": [ "minimum" ]
    },
    "default": {}
})json";

// Keywords RapidJSON 1.1 validates (schema.h's keyword table) plus draft-04's annotations.
const std::set<std::string> kAllowedKeywords = {
    // validation, as implemented by rapidjson::internal::Schema
    "type", "enum", "allOf", "anyOf", "oneOf", "not", "properties", "required", "dependencies",
    "patternProperties", "additionalProperties", "minProperties", "maxProperties", "items",
    "minItems", "maxItems", "additionalItems", "uniqueItems", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    // references and containers
    "$ref", "definitions", "$schema",
    // draft-04 annotations (no effect on validation)
    "title", "description", "default"};

// Why a keyword is refused, for the common ones; anything else not allowed is "unknown".
std::string Reason(const std::string& keyword) {
  if (keyword == "format") {
    return "'format' is not enforced by RapidJSON 1.1; use 'pattern'";
  }
  if (keyword == "id") return "'id' (scope change) is not used by RapidJSON 1.1; drop it";
  static const std::set<std::string> newer = {
      "const", "contains", "propertyNames", "if", "then", "else", "$defs", "$id", "$anchor",
      "$comment", "examples", "dependentRequired", "dependentSchemas", "prefixItems",
      "unevaluatedProperties", "unevaluatedItems", "minContains", "maxContains",
      "contentMediaType", "contentEncoding", "readOnly", "writeOnly", "deprecated",
      "$dynamicRef", "$recursiveRef", "nullable"};
  if (newer.count(keyword)) {
    return "'" + keyword + "' is not a draft-04 keyword: RapidJSON 1.1 would ignore it";
  }
  return "unknown keyword '" + keyword + "' (typo?): RapidJSON 1.1 would ignore it";
}

class Linter {
 public:
  explicit Linter(const Value& root) : root_(root) {}

  std::vector<std::string> Run() {
    if (!root_.IsObject()) {
      errors_.push_back("/: the root must be a schema object");
      return errors_;
    }
    auto schema = root_.FindMember("$schema");
    if (schema == root_.MemberEnd() || !schema->value.IsString() ||
        std::string(schema->value.GetString()) != kDraft04) {
      errors_.push_back(std::string("/: \"$schema\" must be \"") + kDraft04 + "\"");
    }
    Schema(root_, "", /*is_root=*/true);
    return errors_;
  }

 private:
  void Error(const std::string& where, const std::string& what) {
    errors_.push_back((where.empty() ? "/" : where) + ": " + what);
  }

  void Schema(const Value& s, const std::string& where, bool is_root = false) {
    if (!s.IsObject()) {
      Error(where, "a schema must be an object (boolean schemas are not draft-04)");
      return;
    }
    for (auto it = s.MemberBegin(); it != s.MemberEnd(); ++it) {
      std::string key = it->name.GetString();
      if (!kAllowedKeywords.count(key)) Error(where, Reason(key));
      if (key == "$schema" && !is_root) Error(where, "\"$schema\" only at the root");
    }
    if (s.HasMember("$ref")) {
      Ref(s, where);
      return;  // draft-04 ignores the siblings of $ref; Ref() reports them
    }
    Exclusive(s, where, "exclusiveMinimum", "minimum");
    Exclusive(s, where, "exclusiveMaximum", "maximum");
    if (s.HasMember("pattern")) Pattern(s["pattern"], where + "/pattern");
    Required(s, where);
    SchemaMap(s, "properties", where);
    SchemaMap(s, "definitions", where);
    SchemaMap(s, "patternProperties", where);
    if (s.HasMember("patternProperties") && s["patternProperties"].IsObject()) {
      for (auto& m : s["patternProperties"].GetObject()) {
        Pattern(m.name, where + "/patternProperties/" + m.name.GetString());
      }
    }
    for (const char* k : {"additionalProperties", "additionalItems"}) {
      if (s.HasMember(k) && !s[k].IsBool()) Schema(s[k], where + "/" + k);
    }
    if (s.HasMember("items")) {
      if (s["items"].IsArray()) {
        SchemaArray(s["items"], where + "/items");
      } else {
        Schema(s["items"], where + "/items");
      }
    }
    for (const char* k : {"allOf", "anyOf", "oneOf"}) {
      if (s.HasMember(k)) SchemaArray(s[k], where + "/" + k);
    }
    if (s.HasMember("not")) Schema(s["not"], where + "/not");
    if (s.HasMember("dependencies") && s["dependencies"].IsObject()) {
      for (auto& m : s["dependencies"].GetObject()) {
        if (m.value.IsObject()) Schema(m.value, where + "/dependencies/" + m.name.GetString());
      }
    }
  }

  void SchemaMap(const Value& s, const char* keyword, const std::string& where) {
    if (!s.HasMember(keyword)) return;
    const Value& map = s[keyword];
    if (!map.IsObject()) {
      Error(where + "/" + keyword, "must be an object of schemas");
      return;
    }
    for (auto& m : map.GetObject()) {
      Schema(m.value, where + "/" + keyword + "/" + m.name.GetString());
    }
  }

  void SchemaArray(const Value& a, const std::string& where) {
    if (!a.IsArray()) {
      Error(where, "must be an array of schemas");
      return;
    }
    for (rapidjson::SizeType i = 0; i < a.Size(); ++i) {
      Schema(a[i], where + "/" + std::to_string(i));
    }
  }

  void Ref(const Value& s, const std::string& where) {
    const Value& ref = s["$ref"];
    if (!ref.IsString() || ref.GetString()[0] != '#') {
      Error(where, "\"$ref\" must be a local reference (\"#/...\"): RapidJSON 1.1 resolves remote "
                   "ones only with a provider, and otherwise accepts anything");
      return;
    }
    rapidjson::Pointer pointer(ref.GetString() + 1, ref.GetStringLength() - 1);
    if (ref.GetStringLength() > 1 && (!pointer.IsValid() || pointer.Get(root_) == nullptr)) {
      Error(where, std::string("\"$ref\": \"") + ref.GetString() + "\" does not resolve");
    }
    for (auto it = s.MemberBegin(); it != s.MemberEnd(); ++it) {
      std::string key = it->name.GetString();
      if (key != "$ref" && key != "description" && key != "title") {
        Error(where, "'" + key + "' next to \"$ref\" is ignored by draft-04");
      }
    }
  }

  void Exclusive(const Value& s, const std::string& where, const char* keyword,
                 const char* bound) {
    if (!s.HasMember(keyword)) return;
    if (!s[keyword].IsBool()) {
      Error(where, std::string(keyword) +
                       " must be a boolean in draft-04 (the numeric form is ignored)");
    } else if (!s.HasMember(bound)) {
      Error(where, std::string(keyword) + " without " + bound);
    }
  }

  void Pattern(const Value& pattern, const std::string& where) {
    if (!pattern.IsString()) {
      Error(where, "a pattern must be a string");
      return;
    }
    rapidjson::internal::Regex regex(pattern.GetString());
    if (!regex.IsValid()) {
      Error(where, std::string("RapidJSON's regex engine cannot compile \"") +
                       pattern.GetString() +
                       "\" (no \\d, \\w, \\s, lookarounds or lazy quantifiers), so it would "
                       "accept anything");
    }
  }

  void Required(const Value& s, const std::string& where) {
    if (!s.HasMember("required") || !s["required"].IsArray()) return;
    auto additional = s.FindMember("additionalProperties");
    const bool closed = additional != s.MemberEnd() && additional->value.IsBool() &&
                        !additional->value.GetBool();
    auto properties = s.FindMember("properties");
    if (!closed || properties == s.MemberEnd() || !properties->value.IsObject()) return;
    for (const Value& name : s["required"].GetArray()) {
      if (name.IsString() && !properties->value.HasMember(name)) {
        Error(where, std::string("required \"") + name.GetString() +
                         "\" is not in properties and additionalProperties is false: no "
                         "document can match");
      }
    }
  }

  const Value& root_;
  std::vector<std::string> errors_;
};

// Lints one schema text: parse, meta-schema, keywords.
std::vector<std::string> LintText(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str());
  if (doc.HasParseError()) {
    return {std::string("not JSON: ") + rapidjson::GetParseError_En(doc.GetParseError()) +
            " at offset " + std::to_string(doc.GetErrorOffset())};
  }
  // Destroyed at exit (RapidJSON packs flags into pointer bits, so LeakSanitizer cannot see
  // through a deliberately leaked document).
  struct Meta {
    Meta() { doc.Parse(kDraft04MetaSchema); }
    rapidjson::Document doc;
  };
  static const Meta meta_source;
  static const rapidjson::SchemaDocument meta_schema(meta_source.doc);
  const rapidjson::SchemaDocument* meta = &meta_schema;
  std::vector<std::string> errors;
  rapidjson::SchemaValidator validator(*meta);
  if (!doc.Accept(validator)) {
    rapidjson::StringBuffer at;
    validator.GetInvalidDocumentPointer().StringifyUriFragment(at);
    errors.push_back(std::string("fails the draft-04 meta-schema at ") + at.GetString() +
                     " (keyword '" + validator.GetInvalidSchemaKeyword() + "')");
  }
  std::vector<std::string> lint = Linter(doc).Run();
  errors.insert(errors.end(), lint.begin(), lint.end());
  return errors;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::filesystem::path> SchemaFiles() {
  std::vector<std::filesystem::path> files;
  for (const auto& entry :
       std::filesystem::recursive_directory_iterator(ledger::testing::SchemasDir())) {
    if (entry.is_regular_file() && entry.path().extension() == ".json") {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(SchemaLintTest, MetaSchemaLoadsAndValidates) {
  // The meta-schema accepts itself minus its "format" use, and rejects a wrong type.
  EXPECT_TRUE(LintText(R"({"$schema":"http://json-schema.org/draft-04/schema#","type":"object"})")
                  .empty());
  EXPECT_FALSE(LintText(R"({"$schema":"http://json-schema.org/draft-04/schema#","minLength":"3"})")
                   .empty());
  EXPECT_FALSE(LintText(R"({"$schema":"http://json-schema.org/draft-04/schema#",)"
                        R"("properties":{"a":{"type":"text"}}})")
                   .empty());
}

TEST(SchemaLintTest, EverySchemaFileIsDraft04AsRapidJsonImplementsIt) {
  std::vector<std::filesystem::path> files = SchemaFiles();
  ASSERT_FALSE(files.empty());
  bool has_envelope = false, has_cloudevent = false;
  for (const auto& path : files) {
    std::string relative =
        std::filesystem::relative(path, ledger::testing::SchemasDir()).generic_string();
    has_envelope |= relative == "envelope.schema.json";
    has_cloudevent |= relative == "cloudevent.schema.json";
    EXPECT_TRUE(relative.size() > 12 &&
                relative.compare(relative.size() - 12, 12, ".schema.json") == 0)
        << relative << ": schema files are named *.schema.json";
    for (const std::string& error : LintText(ReadFile(path))) {
      ADD_FAILURE() << relative << ": " << error;
    }
  }
  EXPECT_TRUE(has_envelope);
  EXPECT_TRUE(has_cloudevent);
}

TEST(SchemaLintTest, EventSchemasAreNamedAfterTheirType) {
  std::filesystem::path dir = std::filesystem::path(ledger::testing::SchemasDir()) / "events";
  size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    rapidjson::Document doc;
    std::string text = ReadFile(entry.path());
    doc.Parse(text.c_str());
    ASSERT_FALSE(doc.HasParseError()) << name;
    ASSERT_TRUE(doc.IsObject() && doc.HasMember("title") && doc["title"].IsString()) << name;
    EXPECT_EQ(name, std::string(doc["title"].GetString()) + ".schema.json");
    EXPECT_TRUE(doc.HasMember("description")) << name << ": say what fact the event records";
    EXPECT_TRUE(doc.HasMember("type") && doc["type"] == "object") << name;
    ++count;
  }
  EXPECT_GE(count, 3u);
}

TEST(SchemaLintTest, PlanDefinitionIsTheSameInEverySchemaThatCarriesIt) {
  // plan.created.v1 and plan.updated.v1 are self-contained; their copies must not drift.
  auto definition = [](const std::string& file, const char* name) {
    rapidjson::Document doc;
    std::string text = ReadFile(std::filesystem::path(ledger::testing::SchemasDir()) / file);
    doc.Parse(text.c_str());
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    if (doc.IsObject() && doc.HasMember("definitions") && doc["definitions"].HasMember(name)) {
      doc["definitions"][name].Accept(w);
    }
    return std::string(buf.GetString(), buf.GetSize());
  };
  std::string plan = definition("events/plan.created.v1.schema.json", "plan");
  ASSERT_FALSE(plan.empty());
  EXPECT_EQ(definition("events/plan.updated.v1.schema.json", "plan"), plan);
  std::string actor = definition("events/plan.created.v1.schema.json", "actor");
  ASSERT_FALSE(actor.empty());
  EXPECT_EQ(definition("events/plan.updated.v1.schema.json", "actor"), actor);
  EXPECT_EQ(definition("events/plan.retired.v1.schema.json", "actor"), actor);
}

// ---- Negative controls: each mistake is caught ----------------------------------------------

std::string Wrap(const std::string& body) {
  return R"({"$schema":"http://json-schema.org/draft-04/schema#","type":"object",)" + body + "}";
}

struct BadSchema {
  const char* name;
  std::string text;
  const char* expected;  // a substring of one error
};

class SchemaLintCatches : public ::testing::TestWithParam<BadSchema> {};

TEST_P(SchemaLintCatches, TheMistake) {
  std::vector<std::string> errors = LintText(GetParam().text);
  std::string all;
  for (const std::string& e : errors) all += e + "\n";
  EXPECT_NE(all.find(GetParam().expected), std::string::npos)
      << GetParam().text << "\nerrors:\n"
      << all;
}

INSTANTIATE_TEST_SUITE_P(
    Schemas, SchemaLintCatches,
    ::testing::Values(
        BadSchema{"NotJson", "{", "not JSON"},
        BadSchema{"NoDollarSchema", R"({"type":"object"})", "\"$schema\" must be"},
        BadSchema{"Draft07", R"({"$schema":"http://json-schema.org/draft-07/schema#"})",
                  "\"$schema\" must be"},
        BadSchema{"Const", Wrap(R"("properties":{"a":{"const":1}})"), "'const' is not a draft-04"},
        BadSchema{"Defs", Wrap(R"("$defs":{"a":{}})"), "'$defs' is not a draft-04"},
        BadSchema{"IfThenElse", Wrap(R"("if":{},"then":{},"else":{})"), "'if' is not a draft-04"},
        BadSchema{"Contains", Wrap(R"("properties":{"a":{"contains":{}}})"), "'contains'"},
        BadSchema{"PropertyNames", Wrap(R"("propertyNames":{})"), "'propertyNames'"},
        BadSchema{"Examples", Wrap(R"("examples":[{}])"), "'examples'"},
        BadSchema{"Format", Wrap(R"("properties":{"t":{"type":"string","format":"date-time"}})"),
                  "'format' is not enforced"},
        BadSchema{"Typo", Wrap(R"("requried":["a"])"), "unknown keyword 'requried'"},
        BadSchema{"DeepInItems", Wrap(R"("properties":{"a":{"items":{"anyOf":[{"const":1}]}}})"),
                  "/properties/a/items/anyOf/0: 'const'"},
        BadSchema{"InDefinitions", Wrap(R"("definitions":{"d":{"const":1}})"),
                  "/definitions/d: 'const'"},
        BadSchema{"NumericExclusiveMinimum",
                  Wrap(R"("properties":{"n":{"type":"integer","exclusiveMinimum":0}})"),
                  "must be a boolean in draft-04"},
        BadSchema{"ExclusiveMaximumAlone",
                  Wrap(R"("properties":{"n":{"type":"integer","exclusiveMaximum":true}})"),
                  "exclusiveMaximum without maximum"},
        BadSchema{"UnsupportedRegex", Wrap(R"("properties":{"n":{"pattern":"^\\d+$"}})"),
                  "cannot compile"},
        BadSchema{"UnsupportedPatternPropertiesRegex",
                  Wrap(R"("patternProperties":{"^\\w+$":{}})"), "cannot compile"},
        BadSchema{"UnresolvedRef", Wrap(R"("properties":{"a":{"$ref":"#/definitions/nope"}})"),
                  "does not resolve"},
        BadSchema{"RemoteRef", Wrap(R"("properties":{"a":{"$ref":"other.json#/x"}})"),
                  "must be a local reference"},
        BadSchema{"RefSibling",
                  Wrap(R"("definitions":{"d":{}},"properties":{"a":{"$ref":"#/definitions/d",)"
                       R"("maxLength":3}})"),
                  "'maxLength' next to \"$ref\""},
        BadSchema{"BooleanSchema", Wrap(R"("properties":{"a":true})"), "must be an object"},
        BadSchema{"WrongKeywordType", Wrap(R"("properties":{"a":{"maxLength":"5"}})"),
                  "meta-schema"},
        BadSchema{"RequiredNotDeclared",
                  Wrap(R"("additionalProperties":false,"required":["a"],"properties":{"b":{}})"),
                  "required \"a\" is not in properties"},
        BadSchema{"NestedDollarSchema",
                  Wrap(R"("properties":{"a":{"$schema":"http://json-schema.org/draft-04/schema#"}})"),
                  "only at the root"}),
    [](const ::testing::TestParamInfo<BadSchema>& info) { return info.param.name; });

// The reason for the lint: RapidJSON 1.1 really does ignore these keywords.
TEST(SchemaLintTest, RapidJsonIgnoresWhatTheLintRefuses) {
  auto accepts = [](const char* schema_text, const char* document_text) {
    rapidjson::Document schema_doc;
    schema_doc.Parse(schema_text);
    rapidjson::SchemaDocument schema(schema_doc);
    rapidjson::Document doc;
    doc.Parse(document_text);
    rapidjson::SchemaValidator validator(schema);
    return doc.Accept(validator);
  };
  EXPECT_TRUE(accepts(R"({"const":1})", "2"));
  EXPECT_TRUE(accepts(R"({"type":"string","format":"date-time"})", R"("yesterday")"));
  EXPECT_TRUE(accepts(R"({"type":"integer","exclusiveMinimum":5})", "1"));
  EXPECT_TRUE(accepts(R"({"type":"string","pattern":"^\\d+$"})", R"("abc")"));
  EXPECT_TRUE(accepts(R"({"$ref":"#/definitions/missing"})", "1"));
  // ...while their draft-04 forms are enforced.
  EXPECT_FALSE(accepts(R"({"enum":[1]})", "2"));
  EXPECT_FALSE(accepts(R"({"type":"integer","minimum":5,"exclusiveMinimum":true})", "5"));
  EXPECT_FALSE(accepts(R"({"type":"string","pattern":"^[0-9]+$"})", R"("abc")"));
}

}  // namespace
}  // namespace ledger
