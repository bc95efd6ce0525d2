// Accesses to bytes of shared memory that another process (or, led there by a scribbled position,
// another thread of this one) may be writing meanwhile.
//
// A reader validates what it loads, so such a race is survivable; it must still not be undefined
// behaviour the compiler can exploit (a torn or re-read value), and ThreadSanitizer must not
// report it while it still reports every missing acquire/release between honest threads. Word and
// field accesses are relaxed atomics (on x86-64 and AArch64 the same plain loads and stores);
// bulk copies are memcpy, except under TSan, where they are byte-wise relaxed atomics (what
// memcpy does on the hardware), so that an atomic load at a scribbled position racing a copy is
// not reported while a plain read of a payload nobody published still is.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace shmq::ring {

template <class T>
inline T load_shared(const T& v) noexcept {
  return std::atomic_ref<T>(const_cast<T&>(v)).load(std::memory_order_relaxed);
}
template <class T>
inline void store_shared(T& v, T x) noexcept {
  std::atomic_ref<T>(v).store(x, std::memory_order_relaxed);
}

// N bytes from SRC into shared memory at DST (ring space this process claimed).
inline void copy_in(void* dst, const void* src, std::size_t n) noexcept {
#if defined(__SANITIZE_THREAD__)
  auto* d = static_cast<std::uint8_t*>(dst);
  const auto* s = static_cast<const std::uint8_t*>(src);
  for (std::size_t i = 0; i < n; ++i) store_shared(d[i], s[i]);
#else
  if (n != 0) std::memcpy(dst, src, n);  // (an empty key's SRC may be null: memcpy must not see it)
#endif
}

// N bytes from shared memory at SRC (a record another process may reclaim and overwrite under a
// scribbled position) into private memory at DST.
inline void copy_out(void* dst, const void* src, std::size_t n) noexcept {
#if defined(__SANITIZE_THREAD__)
  auto* d = static_cast<std::uint8_t*>(dst);
  const auto* s = static_cast<const std::uint8_t*>(src);
  for (std::size_t i = 0; i < n; ++i) d[i] = load_shared(s[i]);
#else
  if (n != 0) std::memcpy(dst, src, n);  // (an empty key's SRC may be null: memcpy must not see it)
#endif
}

}  // namespace shmq::ring
