#include "events/wal_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>

#include "events/coding.h"

namespace ledger::wal {

namespace {

constexpr uint32_t kMaskDelta = 0xa282ead8u;
// Zero bytes a torn fragment must end with (RepairTornWalTail).
constexpr size_t kTornZerosMin = 32;

uint32_t Unmask(uint32_t masked) {
  const uint32_t rot = masked - kMaskDelta;
  return (rot >> 17) | (rot << 15);
}

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    table[i] = c;
  }
  return table;
}

// Writes, syncs and closes; false with errno-based `*error` on failure.
bool SyncPath(const std::filesystem::path& path, int flags, std::string* error) {
  int fd = ::open(path.c_str(), flags);
  if (fd < 0 || ::fsync(fd) != 0) {
    *error = path.string() + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return false;
  }
  ::close(fd);
  return true;
}

// Creates `path` (it must not exist) holding `bytes`, synced; false with errno-based `*error`.
bool WriteNewFile(const std::filesystem::path& path, std::string_view bytes, std::string* error) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  std::string why;
  while (fd >= 0 && !bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) why = std::strerror(errno);
    // A write that writes nothing sets no errno: the one left by an earlier call is not its.
    if (n == 0) why = "the write wrote nothing";
    if (n <= 0) break;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  if (why.empty() && (fd < 0 || ::fsync(fd) != 0)) why = std::strerror(errno);
  if (!why.empty()) {
    *error = path.string() + ": " + why;
    if (fd >= 0) ::close(fd);
    return false;
  }
  ::close(fd);
  return true;
}

// Whether the fragment header at `offset` announces more bytes than the file has left, without
// running past its block (the writer never writes a fragment that does: that is damage).
bool RunsPastTheFile(std::string_view contents, size_t offset) {
  if (contents.size() - offset < kHeaderBytes) return false;
  const auto* header = reinterpret_cast<const uint8_t*>(contents.data() + offset);
  const size_t length = header[4] | (static_cast<size_t>(header[5]) << 8);
  const uint8_t type = header[6];
  const size_t header_bytes = type >= kRecyclableFullType && type <= kRecyclableLastType
                                  ? kRecyclableHeaderBytes
                                  : kHeaderBytes;
  return header_bytes + length <= kBlockBytes - offset % kBlockBytes &&
         offset + header_bytes + length > contents.size();
}

}  // namespace

uint32_t Crc32c(std::string_view data) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  uint32_t c = 0xffffffffu;
  for (unsigned char byte : data) c = table[(c ^ byte) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

WalkEnd WalkFragments(std::string_view contents, const std::function<bool(const Fragment&)>& fn,
                      size_t* stop_offset, bool checksums) {
  size_t offset = 0;
  auto end = [&](WalkEnd how) {
    if (stop_offset != nullptr) *stop_offset = offset;
    return how;
  };
  while (offset < contents.size()) {
    const size_t block_left = kBlockBytes - offset % kBlockBytes;
    if (block_left < kHeaderBytes) {  // block padding
      offset += std::min(block_left, contents.size() - offset);
      continue;
    }
    if (contents.size() - offset < kHeaderBytes) return end(WalkEnd::kIncomplete);
    const auto* header = reinterpret_cast<const uint8_t*>(contents.data() + offset);
    const size_t length = header[4] | (static_cast<size_t>(header[5]) << 8);
    const uint8_t type = header[6];
    if (type == kZeroType && length == 0) return end(WalkEnd::kZeroHeader);
    Fragment f;
    f.offset = offset;
    f.type = type;
    const bool recyclable = type >= kRecyclableFullType && type <= kRecyclableLastType;
    f.header_bytes = recyclable ? kRecyclableHeaderBytes : kHeaderBytes;
    f.base_type = recyclable ? static_cast<uint8_t>(type - (kRecyclableFullType - kFullType)) : type;
    if (f.header_bytes + length > block_left || offset + f.header_bytes + length > contents.size()) {
      return end(WalkEnd::kIncomplete);
    }
    f.payload = contents.substr(offset + f.header_bytes, length);
    const uint32_t stored = header[0] | (static_cast<uint32_t>(header[1]) << 8) |
                            (static_cast<uint32_t>(header[2]) << 16) |
                            (static_cast<uint32_t>(header[3]) << 24);
    // Covered: the type byte, the log number of a recyclable header, the payload — contiguous.
    f.checksum_ok = checksums && Unmask(stored) == Crc32c(contents.substr(
                                                       offset + 6, f.header_bytes - 6 + length));
    if (!fn(f)) return end(WalkEnd::kStopped);
    offset = f.end();
  }
  return end(WalkEnd::kEndOfFile);
}

Status ListLogFiles(const std::string& dir,
                    std::vector<std::pair<uint64_t, std::filesystem::path>>* out) {
  out->clear();
  std::error_code ec;
  // increment(ec), not the range-for: its operator++ throws, and this runs inside RocksDB's
  // recovery (EventGapFilter) too.
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::filesystem::path& path = it->path();
    const std::string stem = path.stem().string();
    if (path.extension() != ".log" || stem.empty() || stem.size() > 19 ||
        !std::all_of(stem.begin(), stem.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    out->emplace_back(std::stoull(stem), path);
  }
  if (ec) return Status::IOError("cannot list " + dir + ": " + ec.message());
  std::sort(out->begin(), out->end());
  return Status::OK();
}

Status ReadLogFile(const std::filesystem::path& path, std::string* contents) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError("cannot read " + path.string());
  contents->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) return Status::IOError("cannot read " + path.string());
  return Status::OK();
}

namespace {

// Where the run of zero bytes that ends the file begins (contents.size() when it ends otherwise).
size_t ZeroTailStart(std::string_view contents) {
  size_t from = contents.size();
  while (from > 0 && contents[from - 1] == '\0') --from;
  return from;
}

// `<dir>/torn-wal/` (created) and a path in it named `name` (`name.1`, ... when taken) that no
// file has yet.
Status SavedLogPath(const std::string& dir, const std::string& name,
                    std::filesystem::path* saved_dir, std::filesystem::path* saved) {
  *saved_dir = std::filesystem::path(dir) / "torn-wal";
  std::error_code ec;
  std::filesystem::create_directories(*saved_dir, ec);
  if (ec) return Status::IOError("cannot create " + saved_dir->string() + ": " + ec.message());
  *saved = *saved_dir / name;
  for (int n = 1; std::filesystem::exists(*saved, ec); ++n) {
    *saved = *saved_dir / (name + "." + std::to_string(n));
  }
  if (ec) return Status::IOError("cannot look into " + saved_dir->string() + ": " + ec.message());
  return Status::OK();
}

// The positions of the events (puts into the events family) of one WriteBatch, and the position
// its chain head record names.
class EventPositions final : public PutsHandler {
 public:
  explicit EventPositions(std::optional<uint32_t> head_family) : head_family_(head_family) {}

  rocksdb::Status PutCF(uint32_t family, const rocksdb::Slice& key,
                        const rocksdb::Slice& value) override {
    if (family == head_family_ && key == kHeadKey && value.size() >= 8) {
      head = DecodeFixed64BE(value.data());
    }
    if (family != kEventsFamilyId || key.size() != 8) return rocksdb::Status::OK();
    const uint64_t position = DecodeFixed64BE(key.data());
    if (first == 0) first = position;
    last = position;
    return rocksdb::Status::OK();
  }

  uint64_t first = 0;  // 0: no event
  uint64_t last = 0;
  uint64_t head = 0;  // 0: no chain head record

 private:
  const std::optional<uint32_t> head_family_;
};

}  // namespace

std::optional<size_t> ZeroedHeaderOffset(std::string_view contents) {
  size_t stop = 0;
  const WalkEnd how =
      WalkFragments(contents, [](const Fragment&) { return true; }, &stop, /*checksums=*/false);
  if (how == WalkEnd::kZeroHeader && ZeroTailStart(contents) > stop + kHeaderBytes) return stop;
  return std::nullopt;
}

Status FindZeroedHeaders(const std::string& dir) {
  std::vector<std::pair<uint64_t, std::filesystem::path>> logs;
  LEDGER_RETURN_IF_ERROR(ListLogFiles(dir, &logs));
  for (const auto& [number, path] : logs) {
    std::string contents;
    LEDGER_RETURN_IF_ERROR(ReadLogFile(path, &contents));
    if (const std::optional<size_t> at = ZeroedHeaderOffset(contents)) {
      return Status::Corruption(path.filename().string() + ": a zeroed record header at offset " +
                                std::to_string(*at) +
                                " with written bytes after it (damage: RocksDB would skip the "
                                "rest of its block without a word)");
    }
  }
  return Status::OK();
}

namespace {

// Where to cut a log whose last WriteBatch a crash tore (RepairTornWalTail), or nothing when its
// contents are not that one shape.
std::optional<size_t> TornCut(std::string_view contents) {
  // The zero tail: [zeros_from, end of file).
  const size_t zeros_from = ZeroTailStart(contents);
  if (zeros_from == contents.size()) return std::nullopt;  // no zeros at the end: not torn

  // Walk the intact fragments up to the first anomaly: a fragment whose checksum fails, a header
  // with non-zero bytes but type and length 0, or a fragment running past its block or the file.
  size_t batch_start = 0;  // offset of the fragment that began the WriteBatch being read
  bool in_batch = false;   // between a kFirst fragment and its kLast
  std::optional<size_t> bad_fragment_end;
  size_t stop = 0;
  const WalkEnd how = WalkFragments(contents, [&](const Fragment& f) {
    if (!f.checksum_ok) {
      bad_fragment_end = f.end();
      return false;
    }
    if (f.base_type == kFullType || f.base_type == kFirstType) batch_start = f.offset;
    if (f.base_type == kFirstType) in_batch = true;
    if (f.base_type == kFullType || f.base_type == kLastType) in_batch = false;
    return true;
  }, &stop);
  // In every torn shape the zero tail begins inside the first anomaly (or before it): written
  // bytes after the anomaly mean damage, however the file happens to end.
  bool torn = false;
  switch (how) {
    case WalkEnd::kStopped:
      // The zero tail must begin inside the bad fragment and be longer than the few zero bytes a
      // payload can end with (a big-endian position): else it is damage, not a tear. It may run
      // on through later fragments (two groups written, neither synced, torn near their border).
      torn = zeros_from < *bad_fragment_end && contents.size() - zeros_from >= kTornZerosMin;
      break;
    case WalkEnd::kZeroHeader:
      // A header whose checksum bytes were written and the rest not, or a zero header inside the
      // zero tail that cuts a WriteBatch short. (Zeros starting at a batch boundary are what
      // RocksDB reads as preallocated space: nothing to repair.)
      torn = zeros_from <= stop + kHeaderBytes && (zeros_from > stop || in_batch);
      break;
    case WalkEnd::kIncomplete:
      // A fragment running past the end of the file whose written part ends in a zero tail too
      // long to be the end of a payload.
      torn = zeros_from > stop && contents.size() - zeros_from >= kTornZerosMin &&
             RunsPastTheFile(contents, stop);
      break;
    case WalkEnd::kEndOfFile:
      break;
  }
  if (!torn) return std::nullopt;
  // The fragment types of a WriteBatch before the anomaly were intact: cut where it began.
  return in_batch ? batch_start : stop;
}

}  // namespace

Status RepairTornWalTail(const std::string& dir, TornTailRepair* out) {
  *out = TornTailRepair{};
  std::vector<std::pair<uint64_t, std::filesystem::path>> logs;
  LEDGER_RETURN_IF_ERROR(ListLogFiles(dir, &logs));
  // Every log, newest first: the newest one written, or an older one whose tail a power loss
  // tore while a newer one's pages reached the disk (wal_log.h). A log that is empty or holds
  // only zeros is a log switch the crash left unwritten (its size on disk without its data, at
  // most): nothing to drop.
  for (auto it = logs.rbegin(); it != logs.rend(); ++it) {
    const std::filesystem::path& path = it->second;
    std::string contents;
    LEDGER_RETURN_IF_ERROR(ReadLogFile(path, &contents));
    if (ZeroTailStart(contents) == 0) continue;
    const std::optional<size_t> cut = TornCut(contents);
    if (!cut) continue;
    // Only the bytes cut off are saved: the acknowledged writes before them stay in the live
    // log, and a copy of those would outlive what removes them (a BYOK key's data key, shredded).
    std::filesystem::path saved_dir, copy;
    LEDGER_RETURN_IF_ERROR(SavedLogPath(
        dir, path.filename().string() + ".from-" + std::to_string(*cut), &saved_dir, &copy));
    std::string error;
    if (!WriteNewFile(copy, std::string_view(contents).substr(*cut), &error) ||
        !SyncPath(saved_dir, O_RDONLY | O_DIRECTORY, &error)) {
      return Status::IOError("cannot save the torn tail of the log: " + error);
    }
    int fd = ::open(path.c_str(), O_WRONLY);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(*cut)) != 0 || ::fsync(fd) != 0) {
      error = path.string() + ": " + std::strerror(errno);
      if (fd >= 0) ::close(fd);
      return Status::IOError("cannot cut the torn log: " + error);
    }
    ::close(fd);
    ++out->logs;
    if (out->repaired) continue;  // the newest cut is the one described
    out->repaired = true;
    out->file = path.filename().string();
    out->cut_at = *cut;
    out->cut_bytes = contents.size() - *cut;
    out->copy = copy.string();
  }
  return Status::OK();
}

rocksdb::WalFilter::WalProcessingOption EventGapFilter::LogRecordFound(
    unsigned long long log_number, const std::string& log_file_name,
    const rocksdb::WriteBatch& batch, rocksdb::WriteBatch*, bool*) {
  EventPositions events(head_family_);
  if (!batch.Iterate(&events).ok()) {
    last_ = 0;  // unreadable here: the next event starts the comparison afresh
    compare_first_ = false;
    return WalProcessingOption::kContinueProcessing;
  }
  // A record without events (a group that appended nothing, checkpoints, a fold rebuild's rows)
  // is past the hole when its chain head record names an event not replayed: every event up to
  // the head a group was decided at was written before it. One that names the last replayed
  // event, or has no head record, is replayed.
  const bool past_the_hole =
      events.first != 0 ? events.first > last_ + 1 : events.head > last_;
  if ((last_ != 0 || compare_first_) && past_the_hole) {
    stopped_ = true;
    stopped_log_ = log_file_name;
    stopped_log_number_ = log_number;
    next_position_ = events.first;
    named_head_ = events.first == 0 ? events.head : 0;
    // Copied now: the open deletes the dropped logs once it has flushed what it replayed.
    save_status_ = SaveDroppedLogs();
    return WalProcessingOption::kStopReplay;
  }
  last_ = std::max(last_, events.last);
  return WalProcessingOption::kContinueProcessing;
}

void EventGapFilter::ColumnFamilyLogNumberMap(const std::map<uint32_t, uint64_t>&,
                                              const std::map<std::string, uint32_t>& ids) {
  const auto it = ids.find(kHeadFamily);
  if (it != ids.end()) head_family_ = it->second;
}

Status EventGapFilter::SaveDroppedLogs() {
  if (dir_.empty()) return Status::OK();
  std::vector<std::pair<uint64_t, std::filesystem::path>> logs;
  LEDGER_RETURN_IF_ERROR(ListLogFiles(dir_, &logs));
  std::string error;
  for (const auto& [number, path] : logs) {
    if (number < stopped_log_number_) continue;
    std::filesystem::path saved_dir, copy;
    LEDGER_RETURN_IF_ERROR(SavedLogPath(dir_, path.filename().string(), &saved_dir, &copy));
    std::error_code ec;
    std::filesystem::copy_file(path, copy, ec);
    if (ec) return Status::IOError("cannot copy " + path.string() + ": " + ec.message());
    if (!SyncPath(copy, O_RDONLY, &error) || !SyncPath(saved_dir, O_RDONLY | O_DIRECTORY, &error)) {
      return Status::IOError("cannot sync the copy of a dropped log: " + error);
    }
    saved_.push_back(copy.string());
  }
  return Status::OK();
}

}  // namespace ledger::wal
