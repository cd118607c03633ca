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

// argv after the program name as CLI::App::parse(std::vector<std::string>&&) takes it (last
// first), with each `--name=` (nothing after the '=') given as `--name` and an empty argument:
// CLI11 took the next argument for its value, or failed "1 required TEXT missing" (64), where
// `--name ""` is the flag given empty (78 for a setting that must not be). After `--`, as is.
std::vector<std::string> ReversedArguments(int argc, const char* const* argv);

// A parse error's message when it names options and counts only, or (a value that does not
// convert or fails a check) the option and the value given to it; otherwise the error's kind
// alone: others may repeat any argument (HorribleError's "Long parsed but missing: <argument>").
std::string UsageErrorMessage(const CLI::ParseError& error);

}  // namespace ledger::daemon
