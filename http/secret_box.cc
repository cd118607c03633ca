#include "http/secret_box.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>

#include "events/types.h"
#include "http/base64.h"

namespace ledger::http {

namespace {

constexpr std::string_view kVersionPrefix = "v1:";
// A value sealed under a data key of its own (SealWithDataKey).
constexpr std::string_view kDataKeyPrefix = "v2:";
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;

struct CipherCtx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
};

const unsigned char* Bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}
unsigned char* Bytes(std::string* s) { return reinterpret_cast<unsigned char*>(s->data()); }

Status Unsealable() {
  return Status::InvalidArgument("unsealable", "the sealed value does not open under this key");
}

// What a wrapped data key is bound to: its value's associated data, in a domain of its own (a
// wrapped data key is never taken for a "v1:" key sealed with the value's associated data).
std::string DataKeyAssociatedData(std::string_view associated_data) {
  std::string aad("ledger-byok-dek-v1");
  aad.push_back('\0');
  aad.append(associated_data);
  return aad;
}

// AES-256-GCM under `key` (32 bytes): `prefix` + base64(nonce ‖ ciphertext ‖ tag).
Status SealUnder(std::string_view key, std::string_view prefix, std::string_view plaintext,
                 std::string_view associated_data, std::string* sealed) {
  std::string raw(kNonceBytes + plaintext.size() + kTagBytes, '\0');
  if (RAND_bytes(Bytes(&raw), kNonceBytes) != 1) return Status::Internal("RAND_bytes failed");
  CipherCtx c;
  int len = 0;
  unsigned char* ct = Bytes(&raw) + kNonceBytes;
  bool ok = c.ctx != nullptr &&
            EVP_EncryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) == 1 &&
            EVP_EncryptInit_ex(c.ctx, nullptr, nullptr, Bytes(key), Bytes(&raw)) == 1 &&
            EVP_EncryptUpdate(c.ctx, nullptr, &len, Bytes(associated_data),
                              static_cast<int>(associated_data.size())) == 1 &&
            EVP_EncryptUpdate(c.ctx, ct, &len, Bytes(plaintext),
                              static_cast<int>(plaintext.size())) == 1 &&
            EVP_EncryptFinal_ex(c.ctx, ct + len, &len) == 1 &&
            EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes,
                                ct + plaintext.size()) == 1;
  if (!ok) return Status::Internal("AES-256-GCM encryption failed");
  *sealed = std::string(prefix) + Base64Encode(raw);
  return Status::OK();
}

Status OpenUnder(std::string_view key, std::string_view prefix, std::string_view sealed,
                 std::string_view associated_data, std::string* plaintext) {
  std::string raw;
  if (sealed.substr(0, prefix.size()) != prefix ||
      !Base64Decode(sealed.substr(prefix.size()), &raw) ||
      raw.size() < kNonceBytes + kTagBytes) {
    return Unsealable();
  }
  const size_t ct_bytes = raw.size() - kNonceBytes - kTagBytes;
  std::string out(ct_bytes, '\0');
  std::string tag = raw.substr(kNonceBytes + ct_bytes);
  CipherCtx c;
  int len = 0;
  bool ok = c.ctx != nullptr &&
            EVP_DecryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) == 1 &&
            EVP_DecryptInit_ex(c.ctx, nullptr, nullptr, Bytes(key), Bytes(raw)) == 1 &&
            EVP_DecryptUpdate(c.ctx, nullptr, &len, Bytes(associated_data),
                              static_cast<int>(associated_data.size())) == 1 &&
            EVP_DecryptUpdate(c.ctx, Bytes(&out), &len, Bytes(raw) + kNonceBytes,
                              static_cast<int>(ct_bytes)) == 1 &&
            EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) == 1 &&
            EVP_DecryptFinal_ex(c.ctx, Bytes(&out) + len, &len) == 1;
  if (!ok) {
    WipeSecret(&out);
    return Unsealable();
  }
  *plaintext = std::move(out);
  return Status::OK();
}

}  // namespace

void WipeSecret(std::string* secret) {
  if (!secret->empty()) OPENSSL_cleanse(secret->data(), secret->size());
  secret->clear();
}

Status SecretBox::Create(std::string_view key, std::unique_ptr<SecretBox>* out) {
  if (key.size() != kKeyBytes) {
    return Status::InvalidArgument("bad_master_key", "the master key must be 32 bytes");
  }
  std::unique_ptr<SecretBox> box(new SecretBox());
  box->key_.assign(key);
  box->digest_key_ = HmacSha256(key, "ledger-byok-request-digest-v1");
  box->key_id_ = HexEncode(Sha256("ledger-kek-v1", key)).substr(0, 16);
  *out = std::move(box);
  return Status::OK();
}

SecretBox::~SecretBox() {
  WipeSecret(&key_);
  WipeSecret(&digest_key_);
}

Hash SecretBox::Digest(std::string_view data) const {
  const std::string mac = HmacSha256(digest_key_, data);
  Hash out{};
  std::copy(mac.begin(), mac.end(), out.begin());
  return out;
}

Status SecretBox::Seal(std::string_view plaintext, std::string_view associated_data,
                       std::string* sealed) const {
  return SealUnder(key_, kVersionPrefix, plaintext, associated_data, sealed);
}

Status SecretBox::Open(std::string_view sealed, std::string_view associated_data,
                       std::string* plaintext) const {
  return OpenUnder(key_, kVersionPrefix, sealed, associated_data, plaintext);
}

bool SecretBox::IsSealedWithDataKey(std::string_view sealed) {
  return sealed.substr(0, kDataKeyPrefix.size()) == kDataKeyPrefix;
}

Status SecretBox::SealWithDataKey(std::string_view plaintext, std::string_view associated_data,
                                  std::string* sealed, std::string* wrapped_data_key) const {
  std::string data_key(kKeyBytes, '\0');
  if (RAND_bytes(Bytes(&data_key), static_cast<int>(kKeyBytes)) != 1) {
    return Status::Internal("RAND_bytes failed");
  }
  Status s = SealUnder(data_key, kDataKeyPrefix, plaintext, associated_data, sealed);
  if (s.ok()) s = Seal(data_key, DataKeyAssociatedData(associated_data), wrapped_data_key);
  WipeSecret(&data_key);
  return s;
}

Status SecretBox::UnwrapDataKey(std::string_view wrapped_data_key,
                                std::string_view associated_data, std::string* data_key) const {
  std::string key;
  LEDGER_RETURN_IF_ERROR(Open(wrapped_data_key, DataKeyAssociatedData(associated_data), &key));
  if (key.size() != kKeyBytes) {
    WipeSecret(&key);
    return Unsealable();
  }
  *data_key = std::move(key);
  return Status::OK();
}

Status SecretBox::RewrapDataKey(const SecretBox& previous, std::string_view wrapped_data_key,
                                std::string_view associated_data, std::string* rewrapped) const {
  std::string data_key;
  LEDGER_RETURN_IF_ERROR(previous.UnwrapDataKey(wrapped_data_key, associated_data, &data_key));
  Status s = Seal(data_key, DataKeyAssociatedData(associated_data), rewrapped);
  WipeSecret(&data_key);
  return s;
}

Status SecretBox::OpenWithDataKey(std::string_view sealed, std::string_view wrapped_data_key,
                                  std::string_view associated_data,
                                  std::string* plaintext) const {
  std::string data_key;
  LEDGER_RETURN_IF_ERROR(UnwrapDataKey(wrapped_data_key, associated_data, &data_key));
  Status s = OpenUnder(data_key, kDataKeyPrefix, sealed, associated_data, plaintext);
  WipeSecret(&data_key);
  return s;
}

}  // namespace ledger::http
