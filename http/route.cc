#include "http/route.h"

namespace ledger::http {

const char* PolicyName(Policy policy) {
  switch (policy) {
    case Policy::kPublic:
      return "public";
    case Policy::kUser:
      return "user";
    case Policy::kAdmin:
      return "admin";
    case Policy::kService:
      return "service";
    case Policy::kUserOrService:
      return "user_or_service";
    case Policy::kSignature:
      return "signature";
  }
  return "unknown";
}

}  // namespace ledger::http
