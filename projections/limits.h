// Every string, array and collection the projections module accepts has a limit, here. The JSON
// Schemas under schemas/ state the same bounds (maxLength counts code points there, bytes here;
// a string within the byte bound is always within the schema's bound).
#pragma once

#include <cstddef>
#include <cstdint>

#include "events/limits.h"

namespace ledger::projections::limits {

// Plan catalog (projections/plan_catalog.h).
inline constexpr size_t kPlansMax = 256;                   // plans in the catalog, retired included
inline constexpr size_t kPlanIdBytesMax = 64;              // [a-z0-9][a-z0-9-]*
inline constexpr size_t kPlanDisplayNameBytesMax = 128;
inline constexpr size_t kPlanDescriptionBytesMax = 2048;
inline constexpr size_t kPlanFeaturesMax = 32;
inline constexpr size_t kPlanFeatureBytesMax = 256;
// A stored plan's Stripe price ids ([A-Za-z0-9_.-]); a price id given to the catalog now is
// stripe_webhook.h's IsStripeId (kStripeIdBytesMax, no '.'), checked first and told alone.
inline constexpr size_t kStripePriceIdBytesMax = 255;
inline constexpr int64_t kPriceCentsMax = 10'000'000'000;  // $100M: far above any real price
inline constexpr int64_t kApiCallsLimitMax = 1'000'000'000'000;
inline constexpr int64_t kTrialDaysMax = 365;
inline constexpr int64_t kTeamSeatsMax = 100'000;
// A plan request body (POST/PUT). The server's global body limit is larger.
inline constexpr size_t kPlanRequestBytesMax = 64 * 1024;
// Actor fields recorded with admin changes.
inline constexpr size_t kActorSubjectBytesMax = 255;
inline constexpr size_t kActorEmailBytesMax = 320;

// Subscriptions and Stripe webhooks (projections/subscriptions.h, projections/stripe_webhook.h).
inline constexpr size_t kStripeWebhookBytesMax = 512 * 1024;  // a delivery's raw body
inline constexpr size_t kStripeIdBytesMax = 200;          // evt_/cus_/sub_/in_/si_/price_ ids
inline constexpr size_t kStripeEventTypeBytesMax = 128;
inline constexpr size_t kUserIdBytesMax = 255;            // our user ids (JWT sub)
inline constexpr size_t kEmailBytesMax = 320;
inline constexpr size_t kStripeTextBytesMax = 255;        // other short strings copied from Stripe
// A subscription item's billed price, as kept (larger values are not kept: the catalog price
// stands in). Stripe's own unit_amount limit is 8 digits; together they keep a year's revenue of
// one subscription far below int64.
inline constexpr int64_t kStripeUnitAmountMax = 99'999'999;
inline constexpr int64_t kStripeQuantityMax = 1'000'000;
inline constexpr int64_t kStripeIntervalCountMax = 1'000;  // Stripe: at most 3 years
// Subscriptions and customers one user query looks at (a user with more is served from the first
// ones in id order; real users have one or two).
inline constexpr size_t kUserSubscriptionsMax = 256;

// Lago webhooks and the Lago projection (projections/lago.h).
// A delivery's raw body in jwt mode: X-Lago-Signature embeds the whole body, so this bounds the
// request's head (http/limits.h kLagoSignatureBytesMax).
inline constexpr size_t kLagoWebhookBytesMax = 512 * 1024;
// Recordings of one body under other unique keys (projections/lago.h "Repeated bodies").
inline constexpr uint64_t kLagoBodyRepeatsMax = 64;
inline constexpr size_t kLagoUniqueKeyBytesMax = 255;       // X-Lago-Unique-Key (a UUID)
inline constexpr size_t kLagoTypeBytesMax = 128;            // webhook_type, object_type
inline constexpr size_t kLagoIdBytesMax = 255;              // lago_id, external ids, codes copied
// The fields of a lago.webhook_received.v1 beside its payload, at most: unique_key and
// repeat_of_unique_key (visible ASCII, `"` and `\` escaped: 2 bytes each), external_customer_id
// (a control character escaped as \u00XX: 6 bytes each), webhook_type, object_type and the
// derived event's type, and 1 KiB for the member names, raw_sha256, raw_bytes and punctuation.
inline constexpr size_t kLagoWebhookRecordFieldsBytesMax =
    2 * 2 * kLagoUniqueKeyBytesMax + 6 * kLagoIdBytesMax + 2 * kLagoTypeBytesMax +
    ledger::limits::kEventTypeBytesMax + 1024;
// A delivery's stored payload (its secrets redacted), and its raw body in hmac mode, where
// nothing else bounds it: what fits in one event's data beside the record's other fields.
inline constexpr size_t kLagoWebhookPayloadBytesMax =
    ledger::limits::kEventDataBytesMax - kLagoWebhookRecordFieldsBytesMax;
inline constexpr size_t kLagoTextBytesMax = 255;            // other short strings copied
inline constexpr size_t kLagoInvoiceSubscriptionsMax = 64;  // subscription ids kept per invoice
// Subscriptions (lago_ids) one query looks at under one external_id; plan changes add one each.
inline constexpr size_t kLagoSubscriptionsPerExternalIdMax = 256;

// Usage metering (projections/usage.h, http/usage_routes.cc).
inline constexpr size_t kUsageBatchItemsMax = 1000;        // items of one POST /usage/events
// A usage.batch_recorded.v1 holds one user's items of one request; once its data reaches this
// many bytes the user's further items go into a next event. A request body is at most 1 MiB, but
// each item grows by its window fields in the event, so one user's 1000 items could otherwise pass
// events' kEventDataBytesMax (and a GET /api/v1/events page would hold up to 1000 such events).
inline constexpr size_t kUsageBatchEventDataBytesSoftMax = 256 * 1024;
inline constexpr int64_t kUsageConsumeQuantityMax = 10'000;  // one consume
inline constexpr int64_t kUsageBatchQuantityMax = 1'000'000;  // one batch item
inline constexpr size_t kServiceIdBytesMax = 64;
inline constexpr size_t kUsageMetadataPropertiesMax = 32;  // flat object members
inline constexpr size_t kUsageMetadataNameBytesMax = 128;
inline constexpr size_t kUsageMetadataValueBytesMax = 1024;  // a string value
// A batch item's timestamp may be at most this far ahead of the writer's clock ...
inline constexpr int64_t kUsageFutureSkewSeconds = 300;
// ... and at most this far behind it: two billing months, so a metering pipeline's late reports
// of the previous period (a month's usage sent days after it closed) still count. Each item
// dated on a day of its own opens a window (a counter row), so back to 2000-01-01, as before,
// one caller gave a user ~9,600 rows at 1,000 a request, which every summary read.
inline constexpr int64_t kUsageBackdateHorizonSeconds = 62 * 86400;
// Windows GET /api/v1/usage/summary lists (newest first).
inline constexpr size_t kUsageSummaryWindowsMax = 100;
// Users whose access the usage deciders keep cached (UsageAccessCache; ~1-2 KiB each).
inline constexpr size_t kUsageAccessCacheEntriesMax = 16384;
// Users one reset-usage request resets (users sharing the email).
inline constexpr size_t kUsageResetUsersMax = kUserSubscriptionsMax;

}  // namespace ledger::projections::limits
