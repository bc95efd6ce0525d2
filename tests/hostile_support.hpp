// Helpers for tests that play a hostile peer: a second, raw mapping of a channel's segment file
// through which a test rewrites header fields, positions and table entries behind the library's
// back, as another process could.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "ringbuffer/record_ring.hpp"
#include "shm/segment.hpp"
#include "support.hpp"

namespace shmq::test {

// The segment file of CHANNEL mapped read-write, as a peer maps it.
class RawSegment {
 public:
  explicit RawSegment(const std::string& channel) {
    const int fd = ::open(segment_path(channel).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      ADD_FAILURE() << "open " << segment_path(channel) << ": " << std::strerror(errno);
      return;
    }
    struct stat st {};
    ::fstat(fd, &st);
    bytes_ = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      ADD_FAILURE() << "mmap: " << std::strerror(errno);
      bytes_ = 0;
      return;
    }
    base_ = static_cast<std::byte*>(p);
  }
  ~RawSegment() {
    if (base_) ::munmap(base_, bytes_);
  }
  RawSegment(const RawSegment&) = delete;
  RawSegment& operator=(const RawSegment&) = delete;

  std::byte* base() const noexcept { return base_; }
  std::size_t bytes() const noexcept { return bytes_; }
  // The 64-bit word at byte OFFSET, written atomically (a peer's store).
  void store64(std::size_t offset, std::uint64_t v) const {
    reinterpret_cast<std::atomic<std::uint64_t>*>(base_ + offset)->store(v, std::memory_order_seq_cst);
  }
  std::uint64_t load64(std::size_t offset) const {
    return reinterpret_cast<std::atomic<std::uint64_t>*>(base_ + offset)->load(std::memory_order_seq_cst);
  }
  void store32(std::size_t offset, std::uint32_t v) const {
    reinterpret_cast<std::atomic<std::uint32_t>*>(base_ + offset)->store(v, std::memory_order_seq_cst);
  }

  // Where things are, read from the header as it was made (call before scribbling over it).
  std::size_t ring_offset() const { return static_cast<std::size_t>(load64(offsetof(detail::SegmentHeader, ring_offset))); }
  const ring::RingHeader& ring_header() const { return *reinterpret_cast<const ring::RingHeader*>(base_ + ring_offset()); }
  std::size_t ring_data() const { return ring_offset() + static_cast<std::size_t>(ring_header().data_offset); }
  std::uint64_t ring_capacity() const { return ring_header().capacity; }
  std::size_t ring_tail() const { return ring_offset() + offsetof(ring::RingHeader, tail); }
  std::size_t ring_cleaned() const { return ring_offset() + offsetof(ring::RingHeader, cleaned); }
  std::size_t group(std::uint32_t i) const {
    return static_cast<std::size_t>(load64(offsetof(detail::SegmentHeader, groups_offset))) + i * sizeof(detail::GroupSlot);
  }
  std::size_t group_next(std::uint32_t i) const { return group(i) + offsetof(detail::GroupSlot, next); }

 private:
  std::byte* base_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace shmq::test
