// CRC32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78): the checksum of every journal
// record and checkpoint.
//
// Contract. crc32c(crc, data, n) extends CRC, the CRC32C of some bytes A, to the CRC32C of A
// followed by DATA[0, n); crc32c(0, data, n) is the CRC32C of DATA alone (so crc32c(0, "123456789",
// 9) == 0xE3069283). It uses the SSE4.2 crc32 instruction when the CPU has it (decided once, at the
// first call) and a table otherwise; both give the same result for every input. Thread-safe,
// allocation-free, never fails.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmq::journal {

std::uint32_t crc32c(std::uint32_t crc, const void* data, std::size_t n) noexcept;

// The two paths, for tests and benchmarks. crc32c_hardware requires crc32c_hardware_available().
std::uint32_t crc32c_portable(std::uint32_t crc, const void* data, std::size_t n) noexcept;
std::uint32_t crc32c_hardware(std::uint32_t crc, const void* data, std::size_t n) noexcept;
bool crc32c_hardware_available() noexcept;

// A CRC stored beside (or inside) data that is itself checksummed, as a journal record's CRC is
// when a journal is copied into a payload, would make the CRC of the whole degenerate; store the
// masked form (leveldb's mask: rotate right by 15 bits and add a constant).
inline constexpr std::uint32_t kCrcMaskDelta = 0xa282ead8u;
constexpr std::uint32_t mask_crc(std::uint32_t crc) noexcept {
  return ((crc >> 15) | (crc << 17)) + kCrcMaskDelta;
}
constexpr std::uint32_t unmask_crc(std::uint32_t masked) noexcept {
  const std::uint32_t rot = masked - kCrcMaskDelta;
  return (rot >> 17) | (rot << 15);
}

}  // namespace shmq::journal
