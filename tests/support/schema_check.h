// JSON Schema checks for tests: every event a test produces should validate against
// schemas/events/<type>.schema.json, and envelopes against schemas/envelope.schema.json and
// schemas/cloudevent.schema.json. Validation is RapidJSON 1.1's draft-04 validator, the same one
// the daemon could use; schemas are linted for draft-04-only keywords by
// tests/projections/schema_lint_test.cc.
//
// Schema files are read from LEDGER_SOURCE_DIR/schemas once and cached; all functions are
// thread-safe.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "events/event.h"
#include "events/ledger.h"

namespace ledger::testing {

// Absolute path of the schemas/ directory of the source tree.
std::string SchemasDir();

// Validates `json` against the schema file at `schema_path` (relative to schemas/, e.g.
// "events/plan.created.v1.schema.json"). Fails when the file is missing or not JSON, when `json`
// is not JSON, or when it does not validate; the message names the failing keyword and pointers.
::testing::AssertionResult JsonMatchesSchemaFile(std::string_view schema_path,
                                                 std::string_view json);

// Validates `data` against schemas/events/<type>.schema.json. Fails when no schema exists for
// `type`.
::testing::AssertionResult EventDataMatchesSchema(std::string_view type, std::string_view data);

// event.data against its type's schema.
::testing::AssertionResult EventMatchesSchema(const Event& event);
::testing::AssertionResult EventMatchesSchema(const NewEvent& event);

// ToEnvelopeJson(event) against envelope.schema.json, ToCloudEventJson(event, source) and
// ToCloudEventJsonWithDataRef(event, source) against cloudevent.schema.json, and event.data against its type's schema.
::testing::AssertionResult EnvelopeMatchesSchema(const Event& event,
                                                 std::string_view source = "urn:ledgerd:test");

}  // namespace ledger::testing
