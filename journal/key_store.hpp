// A persistent, bounded set of keys: what a KeyedConsumer has processed.
//
// Contract. KeyStore::open(path) reads the file (creating it if missing) into memory; add(key)
// appends the key and makes it durable as the Sync policy says; contains(key) answers from memory
// after reading whatever other processes appended since (several processes may have one store
// open: the consumers of one group share one). The newest max_keys keys are remembered; older ones
// are forgotten (a redelivery of a message that old is handled again). One thread at a time per
// KeyStore object.
//
// Durability of add(): Sync, fdatasync before it returns; Async, fdatasync when the last one is
// older than flush_interval (checked on each add and contains, and at close); Memory, never (the
// key survives a crash of the process, not of the host). A key whose add() did not return may or
// may not be in the store after a crash: the caller orders its ack after add().
//
// File format (little-endian), leveldb-style: a header, then one record per key
//
//   header:  magic "SHMQKEYS" (8) | version u32 (1) | reserved u32
//   record:  masked crc32c u32 of the 4 bytes after it and the key | key length u32 | key bytes
//
// Recovery. At open, bytes after the last whole record that no valid record follows are a torn
// tail (a write cut by a power loss): cut (when no other process has the file open) and reported
// in torn_bytes(). Bad bytes that a valid record follows (a bit flip, or a write cut short by a
// full disk while others went on appending) are skipped and reported in damaged_bytes() and
// first_damage() (at once by a process alone with the file; otherwise once they have stayed bad
// for a second, since another process's append may be half visible): the keys in them are forgotten, which costs at most one more handler call each,
// where refusing the file would stop every consumer of the group. A file that does not begin
// with a key store header is refused (Error naming it), and nothing is changed.
//
// Sharing. Every opener holds a shared flock on the file for as long as it has it open. Appends are
// one write() each with O_APPEND, so they never interleave; a short write is an error, never
// continued by a second write. A process that gets the lock exclusively is alone: only then is a
// torn tail cut, or the file compacted (rewritten with the newest max_keys keys into PATH.tmp,
// fdatasync'd, renamed over PATH, directory fsync'd) once it holds more than twice that many
// records: at open, and by add() whenever it finds itself alone (tried again every max_keys
// records). Several processes that keep a store open all the time therefore let it grow until one
// of them is alone with it. An opener that finds the file replaced under its lock opens the new one.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "journal/files.hpp"

namespace shmq::journal {

inline constexpr char kKeyStoreMagic[8] = {'S', 'H', 'M', 'Q', 'K', 'E', 'Y', 'S'};
inline constexpr std::uint32_t kKeyStoreVersion = 1;
inline constexpr std::size_t kKeyStoreHeaderBytes = 16;
inline constexpr std::size_t kKeyRecordHeaderBytes = 8;
inline constexpr std::size_t kMaxStoredKeyBytes = 1 << 17;

struct KeyStoreOptions {
  std::size_t max_keys = 1 << 20;
  Durability sync = Durability::Sync;
  std::chrono::milliseconds flush_interval{5};
  unsigned mode = 0600;
};

class KeyStore {
 public:
  // Throws Error: the file cannot be created or read, is not a key store, or is corrupt.
  static KeyStore open(const std::filesystem::path& path, const KeyStoreOptions& options = {});

  // Whether KEY was added (by this or another process, and is among the newest max_keys).
  bool contains(std::string_view key);
  // Appends KEY (at most kMaxStoredKeyBytes) and syncs as the policy says. Throws Error on an I/O
  // error (the key may then be lost: the caller must not ack). Adding a key already there is a
  // no-op.
  void add(std::string_view key);
  // fdatasyncs what was appended, if anything is not yet.
  void sync();
  // Async: syncs if the last sync is older than flush_interval. True while something is unsynced.
  bool sync_if_due();

  std::size_t size() const noexcept { return order_.size(); }
  std::uint64_t torn_bytes() const noexcept { return torn_bytes_; }  // cut at open
  std::uint64_t damaged_bytes() const noexcept { return damaged_bytes_; }  // skipped (see Recovery)
  std::uint64_t first_damage() const noexcept { return first_damage_; }    // offset of the first, 0: none
  std::uint64_t file_records() const noexcept { return file_records_; }
  const std::filesystem::path& path() const noexcept { return path_; }

  KeyStore(KeyStore&&) noexcept;
  KeyStore& operator=(KeyStore&&) noexcept;
  ~KeyStore();  // syncs (Sync and Async policies), releases the lock

 private:
  KeyStore() = default;
  void open_file();
  void read_new();        // what the file holds beyond read_to_
  void remember(std::string key);
  void compact();
  void compact_if_alone();
  // Holds the shared lock again after a failed conversion, and reopens if the file was replaced.
  void reshare();

  std::filesystem::path path_;
  KeyStoreOptions options_;
  detail::Fd fd_;
  std::uint64_t read_to_ = 0;        // offset up to which the file has been read
  std::uint64_t file_records_ = 0;   // records in the file up to read_to_
  std::uint64_t torn_bytes_ = 0;
  std::uint64_t damaged_bytes_ = 0;
  std::uint64_t first_damage_ = 0;
  std::uint64_t next_compaction_try_ = 0;
  bool alone_ = false;                     // reading at open with the lock exclusive
  std::uint64_t suspect_at_ = ~0ull;       // offset of bad bytes seen while others may append
  std::uint64_t suspect_since_ns_ = 0;  // file_records_ at which add() tries to compact again
  bool dirty_ = false;               // appended since the last fdatasync
  std::uint64_t last_sync_ns_ = 0;
  std::unordered_set<std::string_view> keys_;  // views into order_ (a deque keeps its elements in place)
  std::deque<std::string> order_;    // oldest first, for forgetting beyond max_keys
  std::vector<std::byte> buf_;
};

}  // namespace shmq::journal
