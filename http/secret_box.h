// SecretBox: authenticated encryption of small secrets (BYOK provider API keys) under the
// key-encryption key of LEDGER_MASTER_KEY_FILE, with OpenSSL's AES-256-GCM.
//
// Sealed form: "v1:" + base64(nonce (12 random bytes) ‖ ciphertext ‖ tag (16 bytes)). The
// associated data binds a sealed value to its owner (user, provider, key id), so a sealed key
// copied into another user's row does not open. A fresh random nonce per Seal; with 96-bit random
// nonces one key stays far inside GCM's limits for the number of keys users will ever add.
//
// Crypto-shredding (SealWithDataKey): a value that goes into the permanent log is sealed under a
// fresh random 32-byte data key of its own instead ("v2:" + the same layout, same associated
// data), and only that data key is sealed under the master key (the wrapped data key, "v1:" form,
// associated data "ledger-byok-dek-v1\0" + the value's). The wrapped data key is kept outside the
// log (projections/byok.h, a side row); deleting it makes the "v2:" value in the log, on Kafka
// and in exports unopenable for everyone, the master key's holder included.
//
// key_id(): the first 16 hex digits of SHA-256("ledger-kek-v1" ‖ key): names the key a value was
// sealed under (stored next to it) without revealing anything about the key.
//
// Thread safety: immutable after Create(); Seal/Open from any thread.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "events/status.h"
#include "events/types.h"

namespace ledger::http {

class SecretBox {
 public:
  static constexpr size_t kKeyBytes = 32;

  // InvalidArgument unless `key` is exactly 32 bytes.
  static Status Create(std::string_view key, std::unique_ptr<SecretBox>* out);
  ~SecretBox();
  SecretBox(const SecretBox&) = delete;
  SecretBox& operator=(const SecretBox&) = delete;

  Status Seal(std::string_view plaintext, std::string_view associated_data,
              std::string* sealed) const;
  // InvalidArgument "unsealable" when `sealed` is malformed, was sealed under another key or with
  // other associated data, or was changed.
  Status Open(std::string_view sealed, std::string_view associated_data,
              std::string* plaintext) const;

  // Seals `plaintext` under a fresh random data key ("v2:") into *sealed, and that data key under
  // this key into *wrapped_data_key. The data key itself is wiped before returning.
  Status SealWithDataKey(std::string_view plaintext, std::string_view associated_data,
                         std::string* sealed, std::string* wrapped_data_key) const;
  // Opens a SealWithDataKey value with its wrapped data key; "unsealable" as Open (a "v1:" value,
  // another value's data key, other associated data).
  Status OpenWithDataKey(std::string_view sealed, std::string_view wrapped_data_key,
                         std::string_view associated_data, std::string* plaintext) const;
  // The data key of `wrapped_data_key` (32 bytes; wipe it after use); "unsealable" as Open.
  Status UnwrapDataKey(std::string_view wrapped_data_key, std::string_view associated_data,
                       std::string* data_key) const;
  // Master-key rotation: `wrapped_data_key` (of a value sealed with `associated_data`) unwrapped
  // with `previous` and wrapped again under this key, same associated data, into *rewrapped; the
  // value sealed with the data key (in the log) is unchanged and opens with the new wrapping.
  // "unsealable" as Open when `previous` does not open it.
  Status RewrapDataKey(const SecretBox& previous, std::string_view wrapped_data_key,
                       std::string_view associated_data, std::string* rewrapped) const;
  // Whether `sealed` is in SealWithDataKey's form ("v2:"): it opens only with its data key.
  static bool IsSealedWithDataKey(std::string_view sealed);

  const std::string& key_id() const { return key_id_; }

  // HMAC-SHA256 of `data` under a key derived from the master key: the request hash stored with
  // an idempotency record of a body that carries a plaintext key, which a plain SHA-256 would let
  // anyone holding the data directory confirm a guessed key against.
  Hash Digest(std::string_view data) const;

 private:
  SecretBox() = default;
  std::string key_;
  std::string digest_key_;
  std::string key_id_;
};

// Overwrites `secret` with zeros (OPENSSL_cleanse) and empties it.
void WipeSecret(std::string* secret);

}  // namespace ledger::http
