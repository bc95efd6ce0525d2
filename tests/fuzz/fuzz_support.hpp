// What the libFuzzer targets share: turning fuzzer bytes into journal files and patches whose CRCs
// are fixed up (so that a mutation reaches the checks behind the CRC instead of dying at it), and
// a scratch directory per process under /dev/shm (tmpfs: thousands of executions a second).
//
// A violated invariant calls shmq_fuzz_fail(), which prints the reason and aborts: libFuzzer then
// saves the input as a crash, to be replayed with `TARGET crash-FILE`.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "journal/crc32c.hpp"
#include "journal/format.hpp"

namespace shmq::fuzz {

namespace fs = std::filesystem;

[[noreturn]] inline void fail(const char* why) {
  std::fprintf(stderr, "shmq fuzz invariant violated: %s\n", why);
  std::abort();
}
#define SHMQ_FUZZ_CHECK(cond) \
  do {                        \
    if (!(cond)) ::shmq::fuzz::fail(#cond); \
  } while (0)

// A reader of fuzzer bytes: each take returns 0 / empty once the bytes run out.
class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}
  bool empty() const noexcept { return n_ == 0; }
  std::uint64_t take(std::size_t width) noexcept {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < width && n_; ++i, ++p_, --n_) v |= std::uint64_t{*p_} << (8 * i);
    return v;
  }
  std::string_view take_bytes(std::size_t n) noexcept {
    n = std::min(n, n_);
    std::string_view s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    n_ -= n;
    return s;
  }
  // Up to the next occurrence of SEP (consumed, not returned), or the rest.
  std::string_view take_until(std::string_view sep) noexcept {
    const std::string_view rest(reinterpret_cast<const char*>(p_), n_);
    const std::size_t at = rest.find(sep);
    if (at == std::string_view::npos) return take_bytes(n_);
    const std::string_view s = rest.substr(0, at);
    take_bytes(at + sep.size());
    return s;
  }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
};

// Walks BYTES as journal records from offset 0 and recomputes the CRC of every record whose header
// fields are plausible and whose padded bytes are all there; stops at the first spot that is not
// such a record (the rest stays as the fuzzer made it). Returns the bytes fixed up.
inline std::size_t fix_up_records(std::string& bytes) {
  std::size_t off = 0;
  for (std::size_t guard = 0; guard < bytes.size() / journal::kRecordAlign + 1; ++guard) {
    if (bytes.size() - off < journal::kHeaderBytes) break;
    journal::RecordHeader h;
    std::memcpy(&h, bytes.data() + off, sizeof h);
    if (h.length < journal::kHeaderBytes || h.length > journal::kMaxRecordBytes) break;
    const std::uint64_t padded = journal::align_record(h.length);
    if (padded > bytes.size() - off) break;
    journal::seal_crc(reinterpret_cast<std::byte*>(bytes.data() + off));
    off += padded;
  }
  return off;
}

// A checkpoint file: magic u32 | masked crc32c u32 of everything after it | length u64 | bytes.
// Sets the length to what follows and recomputes the CRC.
inline void fix_up_checkpoint(std::string& bytes) {
  if (bytes.size() < 16) return;
  const std::uint64_t len = bytes.size() - 16;
  std::memcpy(bytes.data() + 8, &len, 8);
  const std::uint32_t crc = journal::mask_crc(journal::crc32c(0, bytes.data() + 8, bytes.size() - 8));
  std::memcpy(bytes.data() + 4, &crc, 4);
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
inline void write_file(const fs::path& p, std::string_view s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

// Removes P (a file or a directory tree) when this process exits (libFuzzer ends a
// -max_total_time run with exit(), which runs atexit handlers; a forked child that exits does not
// remove its parent's), so that a fuzz run leaves nothing in /dev/shm.
inline std::vector<fs::path>& exit_removals() {
  static auto* paths = new std::vector<fs::path>;  // never destroyed: used by the atexit handler
  return *paths;
}
inline void remove_at_exit(const fs::path& p) {
  static const pid_t registered_by = [] {
    std::atexit([] {
      if (::getpid() != registered_by) return;
      std::error_code ec;
      for (const fs::path& q : exit_removals()) fs::remove_all(q, ec);
    });
    return ::getpid();
  }();
  exit_removals().push_back(p);
}

// /dev/shm/shmq-fuzz-TAG-PID, emptied; removed at exit.
inline fs::path scratch_dir(std::string_view tag) {
  const fs::path d = fs::path("/dev/shm") / ("shmq-fuzz-" + std::string(tag) + "-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(d, ec);
  fs::create_directories(d);
  remove_at_exit(d);
  return d;
}

}  // namespace shmq::fuzz
