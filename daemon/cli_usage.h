// How ledgerd and ledgerctl report a command line CLI11 refuses: by the options' names, never by
// the arguments after them (a mistyped flag's argument is its value, maybe a secret).
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace ledger::daemon {

// The arguments CLI11 did not take (App::remaining() after a parse with allow_extras()), told by
// the options' names alone: `--name=value` is named `--name`, `-xvalue` is named `-x`, a bare
// argument is counted, never repeated. Ends with "; see --help".
std::string UnexpectedArguments(const std::vector<std::string>& arguments);

// A parse error's message when it names options and counts only, or (a value that does not
// convert or fails a check) the option and the value given to it; otherwise the error's kind
// alone: others may repeat any argument (HorribleError's "Long parsed but missing: <argument>").
std::string UsageErrorMessage(const CLI::ParseError& error);

}  // namespace ledger::daemon
