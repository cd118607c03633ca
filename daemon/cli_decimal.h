// A CLI11 check for integer flags and settings (ledgerd's and ledgerctl's).
#pragma once

#include <CLI/CLI.hpp>

namespace ledger::daemon {

// CLI11 converts integers with strtoll's base 0, so "0100" would be 64 and "0x3e8" 1000, and an
// unsigned option takes "-1" as 2^64 - 1: these take decimal digits only, without a leading zero.
extern const CLI::Validator kDecimal;

}  // namespace ledger::daemon
