// Every queue, batch and string the events module accepts has a limit, here.
#pragma once

#include <cstddef>

namespace ledger::limits {

// Commands waiting for the writer. Full means Status::Busy (HTTP 503 + Retry-After).
inline constexpr size_t kWriteQueueCommandsMax = 8192;
// Commands and events one group commit takes at most.
inline constexpr size_t kGroupCommandsMax = 1024;
inline constexpr size_t kGroupEventsMax = 16384;
// A group stops taking commands once its decided events reach kGroupEventsMax or its batch this
// many bytes (a command's events are known only after its decide step); the rest wait for the
// next group.
inline constexpr size_t kGroupBytesMax = 64u << 20;
// A decided group's buffers are kept for the next group only below these sizes.
inline constexpr size_t kSpareBatchBytesMax = 16u << 20;
inline constexpr size_t kSpareRowMutationsMax = 1u << 16;
// Events one command may append.
inline constexpr size_t kCommandEventsMax = 10000;
// Sizes of envelope fields.
inline constexpr size_t kEventTypeBytesMax = 128;
inline constexpr size_t kSubjectBytesMax = 256;
inline constexpr size_t kEventDataBytesMax = 1 << 20;
inline constexpr size_t kIdempotencyKeyBytesMax = 255;
inline constexpr size_t kIdempotencyScopeBytesMax = 512;
// GET /api/v1/events page size.
inline constexpr size_t kReadEventsMax = 1000;

// Kafka outbox: events read ahead of the delivered checkpoint (produced, not yet acknowledged
// by Kafka) at most, by count and by bytes; and events read from the log per scan.
inline constexpr size_t kOutboxInFlightEventsMax = 10000;
inline constexpr size_t kOutboxInFlightBytesMax = 64u << 20;
inline constexpr size_t kOutboxScanEventsMax = 1000;
// Largest CloudEvent the outbox publishes whole (below Kafka's default max.message.bytes,
// 1,048,588, with room for the record batch's overhead); the bounds of the setting.
inline constexpr size_t kOutboxMessageBytesMax = 1'000'000;
inline constexpr size_t kOutboxMessageBytesMaxLowest = 1024;
inline constexpr size_t kOutboxMessageBytesMaxHighest = 16u << 20;

}  // namespace ledger::limits
