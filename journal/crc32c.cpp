// CRC32C: a slicing-by-8 table for any CPU, the SSE4.2 crc32 instruction where there is one.
#include "journal/crc32c.hpp"

#include <array>
#include <bit>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define SHMQ_CRC32C_X86 1
#endif

namespace shmq::journal {
namespace {

static_assert(std::endian::native == std::endian::little, "the slicing tables assume little-endian loads");

constexpr std::uint32_t kPolyReflected = 0x82f63b78u;

// kTable[0] is the classic byte-at-a-time table; kTable[k][b] is the CRC of byte b followed by k
// zero bytes, so that eight table look-ups consume eight bytes at once.
using Tables = std::array<std::array<std::uint32_t, 256>, 8>;
constexpr Tables make_tables() {
  Tables t{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c >> 1) ^ ((c & 1u) ? kPolyReflected : 0u);
    t[0][b] = c;
  }
  for (std::size_t k = 1; k < 8; ++k)
    for (std::size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xffu];
  return t;
}
constexpr Tables kTable = make_tables();

std::uint32_t load32(const unsigned char* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

#ifdef SHMQ_CRC32C_X86
__attribute__((target("sse4.2"))) std::uint32_t crc32c_sse42(std::uint32_t crc, const unsigned char* p,
                                                             std::size_t n) noexcept {
  std::uint32_t c = ~crc;
  // Byte steps up to an 8-byte boundary, then 8 bytes per instruction, then the rest.
  while (n > 0 && (reinterpret_cast<std::uintptr_t>(p) & 7u) != 0) {
    c = _mm_crc32_u8(c, *p++);
    --n;
  }
#if defined(__x86_64__)
  std::uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    c64 = _mm_crc32_u64(c64, v);
  }
  c = static_cast<std::uint32_t>(c64);
#endif
  for (; n >= 4; n -= 4, p += 4) c = _mm_crc32_u32(c, load32(p));
  while (n-- > 0) c = _mm_crc32_u8(c, *p++);
  return ~c;
}
#endif

using CrcFn = std::uint32_t (*)(std::uint32_t, const void*, std::size_t) noexcept;

CrcFn choose() noexcept {
  return crc32c_hardware_available() ? &crc32c_hardware : &crc32c_portable;
}

}  // namespace

std::uint32_t crc32c_portable(std::uint32_t crc, const void* data, std::size_t n) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
  while (n > 0 && (reinterpret_cast<std::uintptr_t>(p) & 3u) != 0) {
    c = kTable[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
    --n;
  }
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint32_t lo = c ^ load32(p);
    const std::uint32_t hi = load32(p + 4);
    c = kTable[7][lo & 0xffu] ^ kTable[6][(lo >> 8) & 0xffu] ^ kTable[5][(lo >> 16) & 0xffu] ^ kTable[4][lo >> 24] ^
        kTable[3][hi & 0xffu] ^ kTable[2][(hi >> 8) & 0xffu] ^ kTable[1][(hi >> 16) & 0xffu] ^ kTable[0][hi >> 24];
  }
  while (n-- > 0) c = kTable[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
  return ~c;
}

std::uint32_t crc32c_hardware(std::uint32_t crc, const void* data, std::size_t n) noexcept {
#ifdef SHMQ_CRC32C_X86
  return crc32c_sse42(crc, static_cast<const unsigned char*>(data), n);
#else
  return crc32c_portable(crc, data, n);
#endif
}

bool crc32c_hardware_available() noexcept {
#ifdef SHMQ_CRC32C_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
#else
  return false;
#endif
}

std::uint32_t crc32c(std::uint32_t crc, const void* data, std::size_t n) noexcept {
  static const CrcFn fn = choose();  // thread-safe static: decided once
  return fn(crc, data, n);
}

}  // namespace shmq::journal
