#include "events/event.h"

#include <openssl/rand.h>

#include <cstdio>
#include <ctime>
#include <random>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "events/coding.h"

namespace ledger {

namespace {

constexpr size_t kHashBytes = 32;

std::string_view HashView(const Hash& h) {
  return std::string_view(reinterpret_cast<const char*>(h.data()), h.size());
}

void EncodeBody(const Event& e, std::string* out) {
  out->push_back(static_cast<char>(kEventFormatVersion));
  PutFixed64BE(out, e.position.value());
  PutFixed64BE(out, static_cast<uint64_t>(e.time_us));
  PutLengthPrefixed(out, e.id);
  PutLengthPrefixed(out, e.type);
  PutLengthPrefixed(out, e.subject);
  PutLengthPrefixed(out, e.data);
}

}  // namespace

void EncodeEvent(const Event& event, std::string* out) {
  out->clear();
  out->reserve(2 * kHashBytes + 29 + 16 + event.id.size() + event.type.size() +
               event.subject.size() + event.data.size());
  out->append(HashView(event.prev_hash));
  EncodeBody(event, out);
  out->append(HashView(event.hash));
}

void SealEvent(Event* event) {
  std::string body;
  EncodeBody(*event, &body);
  event->hash = Sha256(HashView(event->prev_hash), body);
}

Status DecodeEvent(std::string_view stored, Event* out) {
  if (stored.size() < 2 * kHashBytes + 1 + 16) return Status::Corruption("event record too short");
  std::copy(stored.begin(), stored.begin() + kHashBytes, out->prev_hash.begin());
  std::copy(stored.end() - kHashBytes, stored.end(), out->hash.begin());
  std::string_view body = stored.substr(kHashBytes, stored.size() - 2 * kHashBytes);
  if (static_cast<uint8_t>(body[0]) != kEventFormatVersion) {
    return Status::Corruption("unknown event format version");
  }
  body.remove_prefix(1);
  uint64_t position = 0, time_us = 0;
  std::string_view id, type, subject, data;
  if (!GetFixed64BE(&body, &position) || !GetFixed64BE(&body, &time_us) ||
      !GetLengthPrefixed(&body, &id) || !GetLengthPrefixed(&body, &type) ||
      !GetLengthPrefixed(&body, &subject) || !GetLengthPrefixed(&body, &data) || !body.empty()) {
    return Status::Corruption("malformed event record");
  }
  out->position = Position(position);
  out->time_us = static_cast<int64_t>(time_us);
  out->id.assign(id);
  out->type.assign(type);
  out->subject.assign(subject);
  out->data.assign(data);
  return Status::OK();
}

bool VerifyEventHash(std::string_view stored) {
  if (stored.size() < 2 * kHashBytes) return false;
  Hash computed = Sha256(stored.substr(0, stored.size() - kHashBytes));
  // Compare bytes, not char with uint8_t: char is signed here, so any hash byte >= 0x80 would
  // compare unequal and an intact event would fail verification.
  return HashView(computed) == stored.substr(stored.size() - kHashBytes);
}

namespace {

constexpr char kVerifyHint[] = " (`ledgerctl verify` names the first damaged position)";

Status BrokenLink(Position key) {
  return Status::Corruption("the stored event at position " + std::to_string(key.value()) +
                            " does not link to the event before it (its prev_hash is not that "
                            "event's hash)" + kVerifyHint);
}

}  // namespace

Status DecodeCheckedEvent(Position key, std::string_view stored, const Hash* prev, Event* out) {
  const std::string at = "the stored event at position " + std::to_string(key.value());
  const char* const hint = kVerifyHint;
  Status decoded = DecodeEvent(stored, out);
  if (!decoded.ok()) {
    return Status::Corruption(at + " cannot be decoded: " + decoded.message() + hint);
  }
  if (out->position != key) {
    return Status::Corruption(at + " says position " + std::to_string(out->position.value()) +
                              hint);
  }
  if (!VerifyEventHash(stored)) {
    return Status::Corruption(at + " fails its hash: the stored bytes were altered" + hint);
  }
  if (prev != nullptr && out->prev_hash != *prev) return BrokenLink(key);
  return Status::OK();
}

bool StoredEventHash(std::string_view stored, Hash* out) {
  if (stored.size() < 2 * kHashBytes) return false;
  std::copy(stored.end() - kHashBytes, stored.end(), out->begin());
  return true;
}

Status CheckEventLink(Position key, std::string_view stored, const Hash& prev) {
  if (stored.size() < 2 * kHashBytes + 1 + 16) {
    return Status::Corruption("the stored event at position " + std::to_string(key.value()) +
                              " cannot be decoded: event record too short" + kVerifyHint);
  }
  if (stored.substr(0, kHashBytes) != HashView(prev)) return BrokenLink(key);
  return Status::OK();
}

std::string FormatRfc3339(int64_t time_us) {
  int64_t seconds = time_us / 1000000;
  int64_t micros = time_us % 1000000;
  if (micros < 0) {
    micros += 1000000;
    seconds -= 1;
  }
  time_t t = static_cast<time_t>(seconds);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(micros));
  return buf;
}

std::string CloudEventSequence(Position position) {
  std::string digits = std::to_string(position.value());
  return std::string(kCloudEventSequenceDigits - digits.size(), '0') + digits;
}

namespace {

template <typename Writer>
void WriteData(Writer* w, const std::string& data) {
  if (data.empty()) {
    w->Null();
  } else {
    w->RawValue(data.data(), data.size(), rapidjson::kObjectType);
  }
}

// Everything of the CloudEvent but its payload; `w` is left inside the object.
void WriteCloudEventAttributes(const Event& event, std::string_view source,
                               rapidjson::Writer<rapidjson::StringBuffer>* w) {
  w->StartObject();
  w->Key("specversion");
  w->String("1.0");
  w->Key("id");
  w->String(event.id);
  w->Key("source");
  w->String(source.data(), static_cast<rapidjson::SizeType>(source.size()));
  w->Key("type");
  w->String(event.type);
  w->Key("subject");
  w->String(event.subject);
  w->Key("time");
  w->String(FormatRfc3339(event.time_us));
  w->Key("datacontenttype");
  w->String("application/json");
  w->Key("sequence");
  w->String(CloudEventSequence(event.position));
  w->Key("prevhash");
  w->String(HexEncode(event.prev_hash));
  w->Key("hash");
  w->String(HexEncode(event.hash));
}

}  // namespace

std::string ToCloudEventJson(const Event& event, std::string_view source) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  WriteCloudEventAttributes(event, source, &w);
  w.Key("data");
  WriteData(&w, event.data);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::string ToCloudEventJsonWithDataRef(const Event& event, std::string_view source) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  WriteCloudEventAttributes(event, source, &w);
  w.Key("dataref");
  w.String("/api/v1/events?after=" + std::to_string(event.position.value() - 1) + "&limit=1");
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::string ToEnvelopeJson(const Event& event) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("position");
  w.Uint64(event.position.value());
  w.Key("id");
  w.String(event.id);
  w.Key("type");
  w.String(event.type);
  w.Key("subject");
  w.String(event.subject);
  w.Key("time");
  w.String(FormatRfc3339(event.time_us));
  w.Key("data");
  WriteData(&w, event.data);
  w.Key("prev_hash");
  w.String(HexEncode(event.prev_hash));
  w.Key("hash");
  w.String(HexEncode(event.hash));
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::string NewUuid() {
  // A per-thread generator seeded from the OS CSPRNG: ids must be unique, not secret.
  thread_local std::mt19937_64 rng = [] {
    uint64_t seed[2] = {0, 0};
    if (RAND_bytes(reinterpret_cast<unsigned char*>(seed), sizeof(seed)) != 1) {
      seed[0] = std::random_device{}();
      seed[1] = std::random_device{}();
    }
    std::seed_seq seq{seed[0], seed[0] >> 32, seed[1], seed[1] >> 32};
    return std::mt19937_64(seq);
  }();
  uint64_t hi = rng(), lo = rng();
  hi = (hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // RFC 4122 variant
  // 8-4-4-4-12 lowercase hex digits, without snprintf (one id per event, on the writer thread).
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(36, '-');
  size_t at = 0;
  auto put = [&](uint64_t bits, int digits) {
    for (int i = digits - 1; i >= 0; --i) out[at++] = kHex[(bits >> (4 * i)) & 0xf];
  };
  put(hi >> 32, 8);
  ++at;
  put(hi >> 16, 4);
  ++at;
  put(hi, 4);
  ++at;
  put(lo >> 48, 4);
  ++at;
  put(lo, 12);
  return out;
}

}  // namespace ledger
