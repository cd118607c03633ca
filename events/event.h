// The event envelope and its stored encoding (see FORMAT.md).
//
//   stored value = prev_hash (32) || body || hash (32)
//   body         = u8 format version (1) || u64 position || i64 time_us ||
//                  lp(id) || lp(type) || lp(subject) || lp(data)
//   hash         = SHA-256(prev_hash || body)
//
// `data` is the event's JSON payload as compact UTF-8 text, exactly as the decider produced it.
// Encoding is canonical: the same event always encodes to the same bytes, so `ledgerctl verify`
// can recompute every hash offline.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "events/status.h"
#include "events/types.h"

namespace ledger {

inline constexpr uint8_t kEventFormatVersion = 1;

struct Event {
  Position position;
  int64_t time_us = 0;   // append time (the writer's clock), Unix microseconds
  std::string id;        // UUID (CloudEvents id); consumers dedupe on it
  std::string type;      // e.g. "plan.created.v1"
  std::string subject;   // e.g. a user id or "plan:starter"; the Kafka key
  std::string data;      // compact JSON object
  Hash prev_hash{};
  Hash hash{};
};

// Serializes `event` (all fields, including both hashes) into `*out`.
void EncodeEvent(const Event& event, std::string* out);

// Computes event->hash from the other fields (including prev_hash).
void SealEvent(Event* event);

// Parses a stored value. Returns Corruption when the bytes are not a well-formed event. Does not
// check the hash; see VerifyEventHash.
Status DecodeEvent(std::string_view stored, Event* out);

// True when `stored`'s trailing hash equals SHA-256 of everything before it.
bool VerifyEventHash(std::string_view stored);

// DecodeEvent for an event read back out of the log to be served or published (GET
// /api/v1/events, the Kafka outbox, the Lago sink), checked as `ledgerctl verify` checks it: the
// record says position `key` (the key it is stored under), its stored hash is SHA-256 of its
// bytes (VerifyEventHash), and, when `prev` is given (the hash of the event at key - 1, read in
// the same scan), its prev_hash equals it. RocksDB's block checksums miss an event rewritten
// through RocksDB itself, or a block they were not applied to; one SHA-256 per event read is the
// cost. Otherwise Corruption naming the position and what failed, never the event's content.
Status DecodeCheckedEvent(Position key, std::string_view stored, const Hash* prev, Event* out);

// The hash stored at the end of an event's bytes, neither decoded nor checked: what the event
// after it must link to. A read that starts after position p takes event p's (one point read) so
// that its first event is linked too. False when `stored` is too short to hold one.
bool StoredEventHash(std::string_view stored, Hash* out);

// Only the link of the event stored at `key`: its stored prev_hash equals `prev`, else
// DecodeCheckedEvent's Corruption for a broken link. A read whose last event has a successor
// looks at that successor this way: an event rewritten and re-sealed verifies on its own, and
// only the next event's prev_hash shows it (the successor itself is not served, so its own bytes
// are not checked here).
Status CheckEventLink(Position key, std::string_view stored, const Hash& prev);

// RFC 3339 UTC with microseconds, e.g. "2026-11-22T10:00:00.123456Z".
std::string FormatRfc3339(int64_t time_us);

// The CloudEvents `sequence` of the event at `position`: its decimal digits zero-padded to 20
// (every u64 fits), because the sequence extension compares values as strings ("10" < "9").
inline constexpr size_t kCloudEventSequenceDigits = 20;
std::string CloudEventSequence(Position position);

// The event as a CloudEvents 1.0 structured-mode JSON document: specversion, id, source, type,
// subject, time, datacontenttype, data, and the extensions `sequence` (CloudEventSequence),
// `prevhash` and `hash` (lowercase hex).
std::string ToCloudEventJson(const Event& event, std::string_view source);

// The same document without `data`, carrying instead the CloudEvents `dataref` extension (the
// claim-check pattern): where the payload can be read, here `/api/v1/events?after=<position - 1>
// &limit=1`. The outbox publishes this for an event whose document exceeds the topic's message
// size; the hash chain still holds (a consumer fetches the payload to check `hash`).
std::string ToCloudEventJsonWithDataRef(const Event& event, std::string_view source);

// The envelope as our own JSON (GET /api/v1/events): position, id, type, subject, time, data,
// prev_hash, hash.
std::string ToEnvelopeJson(const Event& event);

// A random RFC 4122 version-4 UUID.
std::string NewUuid();

}  // namespace ledger
