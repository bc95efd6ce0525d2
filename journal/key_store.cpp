#include "journal/key_store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "journal/crc32c.hpp"

namespace shmq::journal {
namespace {

[[noreturn]] void fail(const std::filesystem::path& path, std::errc code, const std::string& what) {
  throw Error(std::make_error_code(code), "shmq key store '" + path.string() + "': " + what);
}
[[noreturn]] void fail_errno(const std::filesystem::path& path, int err, const std::string& what) {
  throw Error(std::error_code(err, std::generic_category()), "shmq key store '" + path.string() + "': " + what);  // what() appends strerror
}

std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint32_t record_crc(const std::byte* len_and_key, std::size_t n) noexcept {
  return mask_crc(crc32c(0, len_and_key, n));
}

// The record of KEY, as it goes into the file.
std::vector<std::byte> encode_record(std::string_view key) {
  std::vector<std::byte> r(kKeyRecordHeaderBytes + key.size());
  const auto len = static_cast<std::uint32_t>(key.size());
  std::memcpy(r.data() + 4, &len, 4);
  if (!key.empty()) std::memcpy(r.data() + 8, key.data(), key.size());
  const std::uint32_t crc = record_crc(r.data() + 4, 4 + key.size());
  std::memcpy(r.data(), &crc, 4);
  return r;
}

// The record at the start of BYTES: its key and size, or size 0 if BYTES does not begin with a
// whole valid record (too short, a length over the limit, or the CRC does not match).
struct Decoded {
  std::string_view key;
  std::size_t size = 0;
};
Decoded decode_record(std::span<const std::byte> bytes) noexcept {
  if (bytes.size() < kKeyRecordHeaderBytes) return {};
  std::uint32_t crc, len;
  std::memcpy(&crc, bytes.data(), 4);
  std::memcpy(&len, bytes.data() + 4, 4);
  if (len > kMaxStoredKeyBytes || bytes.size() - kKeyRecordHeaderBytes < len) return {};
  if (record_crc(bytes.data() + 4, 4 + std::size_t{len}) != crc) return {};
  return {{reinterpret_cast<const char*>(bytes.data() + 8), len}, kKeyRecordHeaderBytes + len};
}

std::vector<std::byte> header_bytes() {
  std::vector<std::byte> h(kKeyStoreHeaderBytes);
  std::memcpy(h.data(), kKeyStoreMagic, 8);
  std::memcpy(h.data() + 8, &kKeyStoreVersion, 4);
  return h;
}

std::filesystem::path parent_of(const std::filesystem::path& path) {
  return path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
}

// BYTES as the whole content of the empty file FD (the header, or a compacted store).
void write_file(int fd, std::span<const std::byte> bytes, const std::filesystem::path& path) {
  detail::write_all_at(fd, bytes, 0, parent_of(path), path.filename().string());
}

// After a create or a rename: the directory entry is durable too.
void sync_parent(const std::filesystem::path& path) {
  const std::filesystem::path dir = parent_of(path);
  detail::sync_dir(detail::open_dir(dir).get(), dir);
}

}  // namespace

KeyStore::KeyStore(KeyStore&&) noexcept = default;
KeyStore& KeyStore::operator=(KeyStore&&) noexcept = default;

KeyStore::~KeyStore() {
  if (!fd_.valid()) return;
  try {
    if (options_.sync != Durability::Memory) sync();
  } catch (const std::exception&) {
    // A destructor cannot report it; the keys not synced are at worst handled once more.
  }
}

KeyStore KeyStore::open(const std::filesystem::path& path, const KeyStoreOptions& options) {
  if (options.max_keys == 0) fail(path, std::errc::invalid_argument, "max_keys must be at least 1");
  KeyStore s;
  s.path_ = path;
  s.options_ = options;
  s.open_file();
  return s;
}

void KeyStore::open_file() {
  for (;;) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_CREAT, options_.mode);
    if (fd < 0) fail_errno(path_, errno, "cannot open");
    fd_ = detail::Fd(fd);
    // Alone (nobody else has it open): this opener may repair and compact. Otherwise share it.
    const bool alone = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (!alone) {
      if (errno != EWOULDBLOCK) fail_errno(path_, errno, "flock failed");
      while (::flock(fd, LOCK_SH) != 0)
        if (errno != EINTR) fail_errno(path_, errno, "flock failed");
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail_errno(path_, errno, "fstat failed");
    if (!S_ISREG(st.st_mode)) fail(path_, std::errc::invalid_argument, "is not a regular file");
    // A compaction by another process may have renamed a new file over PATH before we had the lock.
    struct stat now {};
    if (::stat(path_.c_str(), &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev) {
      fd_.reset();
      continue;
    }
    const std::vector<std::byte> header = header_bytes();
    if (static_cast<std::uint64_t>(st.st_size) < kKeyStoreHeaderBytes) {
      // New, or its creator died before the header was whole: (re)write it, if this opener is alone
      // and what is there is the start of a header; else wait for the creator, or refuse.
      std::vector<std::byte> start(static_cast<std::size_t>(st.st_size));
      if (!start.empty() && ::pread(fd, start.data(), start.size(), 0) != static_cast<ssize_t>(start.size()))
        fail_errno(path_, errno, "read failed");
      if (!start.empty() && std::memcmp(start.data(), header.data(), start.size()) != 0)
        fail(path_, std::errc::illegal_byte_sequence, "is not a shmq key store (it does not begin with a key store header)");
      if (!alone) {
        fd_.reset();
        ::usleep(1000);
        continue;
      }
      if (::ftruncate(fd, 0) != 0) fail_errno(path_, errno, "cannot truncate");
      write_file(fd, header, path_);
      if (::fdatasync(fd) != 0) fail_errno(path_, errno, "fdatasync failed");
      sync_parent(path_);
    }
    read_to_ = 0;
    file_records_ = 0;
    keys_.clear();
    order_.clear();
    std::byte h[kKeyStoreHeaderBytes];
    if (::pread(fd, h, sizeof h, 0) != static_cast<ssize_t>(sizeof h) || std::memcmp(h, kKeyStoreMagic, 8) != 0)
      fail(path_, std::errc::illegal_byte_sequence, "is not a shmq key store (its first 16 bytes are not a key store header)");
    std::uint32_t version;
    std::memcpy(&version, h + 8, 4);
    if (version != kKeyStoreVersion)
      fail(path_, std::errc::illegal_byte_sequence,
           "is key store version " + std::to_string(version) + "; this build reads version " + std::to_string(kKeyStoreVersion));
    read_to_ = kKeyStoreHeaderBytes;
    alone_ = alone;  // nobody appends meanwhile: bad bytes are what they are
    read_new();
    const auto size = static_cast<std::uint64_t>(::lseek(fd, 0, SEEK_END));
    // Bytes after the last record: a torn tail, cut when alone (otherwise they may be another
    // process's append in progress, which read_new() takes once it is whole).
    alone_ = false;
    if (alone && size > read_to_) {
      torn_bytes_ = size - read_to_;
      if (::ftruncate(fd, static_cast<off_t>(read_to_)) != 0) fail_errno(path_, errno, "cannot cut its torn tail");
      if (::fdatasync(fd) != 0) fail_errno(path_, errno, "fdatasync failed");
    }
    if (alone && file_records_ > 2 * options_.max_keys) {
      compact();
      fd_.reset();
      continue;  // open the compacted file
    }
    if (alone && ::flock(fd, LOCK_SH) != 0) fail_errno(path_, errno, "flock failed");  // downgrade
    next_compaction_try_ = std::max<std::uint64_t>(file_records_, 2 * options_.max_keys) + 1;
    last_sync_ns_ = monotonic_ns();
    return;
  }
}

void KeyStore::read_new() {
  const int fd = fd_.get();
  for (;;) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail_errno(path_, errno, "fstat failed");
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size <= read_to_) return;
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(size - read_to_, 1 << 20));
    buf_.resize(want);
    ssize_t n;
    do n = ::pread(fd, buf_.data(), want, static_cast<off_t>(read_to_));
    while (n < 0 && errno == EINTR);
    if (n < 0) fail_errno(path_, errno, "read failed");
    std::span<const std::byte> b(buf_.data(), static_cast<std::size_t>(n));
    std::size_t at = 0;
    while (at < b.size()) {
      const Decoded d = decode_record(b.subspan(at));
      if (d.size == 0) break;
      remember(std::string(d.key));
      at += d.size;
      ++file_records_;
    }
    if (at == 0) {
      // Not a whole record here. If a valid record follows, the bytes up to it are damage: skip
      // and report them. Otherwise this is a torn tail, or an append still being written: stop.
      // While others may be appending, bytes are damage only once they have stayed bad for a
      // second: a reader can see an append half copied, and a key's bytes may hold a record.
      if (!alone_) {
        const std::uint64_t now = monotonic_ns();
        if (suspect_at_ != read_to_) {
          suspect_at_ = read_to_;
          suspect_since_ns_ = now;
        }
        if (now - suspect_since_ns_ < 1'000'000'000) return;
      }
      std::size_t o = 1;
      while (o + kKeyRecordHeaderBytes <= b.size() && decode_record(b.subspan(o)).size == 0) ++o;
      if (o + kKeyRecordHeaderBytes > b.size()) {
        // None in this chunk. If the file goes on past it, skip what cannot begin a record that
        // ends in the file (all but the last record's worth) and look on; else stop here.
        const std::size_t longest = kKeyRecordHeaderBytes + kMaxStoredKeyBytes;
        if (want == static_cast<std::size_t>(n) && want < size - read_to_ && b.size() > longest) {
          if (first_damage_ == 0) first_damage_ = read_to_;
          damaged_bytes_ += b.size() - longest;
          read_to_ += b.size() - longest;
          continue;
        }
        return;
      }
      if (first_damage_ == 0) first_damage_ = read_to_;
      damaged_bytes_ += o;
      read_to_ += o;
      continue;
    }
    read_to_ += at;
    if (static_cast<std::size_t>(n) < want || at < static_cast<std::size_t>(n)) continue;  // look again from here
  }
}

void KeyStore::remember(std::string key) {
  if (keys_.count(key) != 0) return;
  order_.push_back(std::move(key));
  keys_.insert(order_.back());
  while (order_.size() > options_.max_keys) {
    keys_.erase(order_.front());
    order_.pop_front();
  }
}

bool KeyStore::contains(std::string_view key) {
  read_new();
  sync_if_due();
  return keys_.count(key) != 0;
}

void KeyStore::add(std::string_view key) {
  if (key.size() > kMaxStoredKeyBytes)
    fail(path_, std::errc::value_too_large,
         "a key of " + std::to_string(key.size()) + " bytes; at most " + std::to_string(kMaxStoredKeyBytes));
  read_new();
  if (keys_.count(key) != 0) return;
  const std::vector<std::byte> record = encode_record(key);
  // One write: O_APPEND keeps it whole against other appenders. A short one (a full disk) is not
  // continued, since the rest would land after somebody else's record: readers skip the piece.
  ssize_t n;
  do n = ::write(fd_.get(), record.data(), record.size());
  while (n < 0 && errno == EINTR);
  if (n < 0) fail_errno(path_, errno, "appending a key failed");
  if (static_cast<std::size_t>(n) != record.size())
    fail(path_, std::errc::no_space_on_device,
         "appending a key wrote " + std::to_string(n) + " of " + std::to_string(record.size()) + " bytes (disk full?)");
  dirty_ = true;
  if (options_.sync == Durability::Sync) sync();
  // What we wrote is the end of the file, unless others appended meanwhile: read it back in order.
  read_new();
  sync_if_due();
  if (file_records_ >= next_compaction_try_) compact_if_alone();
}

void KeyStore::compact_if_alone() {
  next_compaction_try_ = file_records_ + options_.max_keys;
  sync();
  if (::flock(fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    // Not alone. A failed conversion may have dropped our shared lock: take it again.
    reshare();
    return;
  }
  compact();
  open_file();  // the compacted file, shared
}

void KeyStore::reshare() {
  while (::flock(fd_.get(), LOCK_SH) != 0)
    if (errno != EINTR) fail_errno(path_, errno, "flock failed");
  struct stat mine {}, now {};
  if (::fstat(fd_.get(), &mine) != 0) fail_errno(path_, errno, "fstat failed");
  if (::stat(path_.c_str(), &now) == 0 && now.st_ino == mine.st_ino && now.st_dev == mine.st_dev) return;
  // Another process compacted it while we held no lock: open the new file (what we remember
  // stays remembered; the new file holds the newest keys, ours among them).
  auto keep_keys = std::move(order_);
  open_file();
  for (std::string& k : keep_keys) remember(std::move(k));
}

void KeyStore::sync() {
  if (!dirty_) return;
  if (::fdatasync(fd_.get()) != 0) fail_errno(path_, errno, "fdatasync failed");
  dirty_ = false;
  last_sync_ns_ = monotonic_ns();
}

bool KeyStore::sync_if_due() {
  if (!dirty_) return false;
  if (options_.sync != Durability::Async) return options_.sync == Durability::Sync && dirty_;
  const auto interval = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(options_.flush_interval).count());
  if (monotonic_ns() - last_sync_ns_ >= interval) sync();
  return dirty_;
}

void KeyStore::compact() {
  const std::filesystem::path tmp = path_.string() + ".tmp";
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, options_.mode);
  if (fd < 0) fail_errno(tmp, errno, "cannot create");
  detail::Fd out(fd);
  std::vector<std::byte> bytes = header_bytes();
  for (const std::string& k : order_) {
    const std::vector<std::byte> r = encode_record(k);
    bytes.insert(bytes.end(), r.begin(), r.end());
  }
  write_file(fd, bytes, tmp);
  if (::fdatasync(fd) != 0) fail_errno(tmp, errno, "fdatasync failed");
  if (::rename(tmp.c_str(), path_.c_str()) != 0) fail_errno(path_, errno, "cannot rename the compacted file over it");
  sync_parent(path_);
}

}  // namespace shmq::journal
