// Helpers for the daemon tests: a clean environment and ParseConfig over a vector of arguments.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "daemon/config.h"

extern char** environ;

namespace ledger::testing {

// Unsets every LEDGER_*, STRIPE_* and LAGO_* variable for the scope (so that a developer's shell
// cannot change a test's outcome) and restores them afterwards. Set() sets one for the scope.
class ScopedCleanEnvironment {
 public:
  ScopedCleanEnvironment() {
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "LEDGER_", 7) == 0 || std::strncmp(*e, "STRIPE_", 7) == 0 ||
          std::strncmp(*e, "LAGO_", 5) == 0) {
        const char* eq = std::strchr(*e, '=');
        if (eq != nullptr)
          saved_.emplace_back(std::string(static_cast<const char*>(*e), eq), std::string(eq + 1));
      }
    }
    for (const auto& [name, value] : saved_) ::unsetenv(name.c_str());
  }
  ~ScopedCleanEnvironment() {
    for (const std::string& name : set_) ::unsetenv(name.c_str());
    for (const auto& [name, value] : saved_) ::setenv(name.c_str(), value.c_str(), 1);
  }
  void Set(const std::string& name, const std::string& value) {
    ::setenv(name.c_str(), value.c_str(), 1);
    set_.push_back(name);
  }

 private:
  std::vector<std::pair<std::string, std::string>> saved_;
  std::vector<std::string> set_;
};

// ParseConfig(argv = {"ledgerd", args...}).
inline daemon::ParseResult Parse(const std::vector<std::string>& args, daemon::Config* config) {
  std::vector<const char*> argv = {"ledgerd"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return daemon::ParseConfig(static_cast<int>(argv.size()), argv.data(), config);
}

}  // namespace ledger::testing
