// The hot path does not allocate: after warm-up, publish, claim/commit, poll and ack make no heap
// allocation. This binary replaces the global operator new/delete (all forms) with counting
// versions and, outside the sanitizers (which own malloc), interposes malloc and friends too. The
// counts are taken only inside an "armed" window of the test's own thread.
#include "support.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {

thread_local bool t_armed = false;
std::atomic<std::uint64_t> g_new_calls{0};
std::atomic<std::uint64_t> g_malloc_calls{0};

inline void note_new() noexcept {
  if (t_armed) g_new_calls.fetch_add(1, std::memory_order_relaxed);
}
inline void note_malloc() noexcept {
  if (t_armed) g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
}

void* counted_new(std::size_t n) {
  note_new();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* counted_new(std::size_t n, std::align_val_t al) {
  note_new();
  const auto a = static_cast<std::size_t>(al);
  const std::size_t rounded = ((n == 0 ? 1 : n) + a - 1) / a * a;
  if (void* p = std::aligned_alloc(a, rounded)) return p;
  throw std::bad_alloc();
}

}  // namespace

// ---- the replaceable global allocation functions -------------------------------------------------
void* operator new(std::size_t n) { return counted_new(n); }
void* operator new[](std::size_t n) { return counted_new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_new(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_new(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t n, std::align_val_t a) { return counted_new(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_new(n, a); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return counted_new(n, a);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return counted_new(n, a);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

// ---- malloc and friends, forwarded to glibc's own entry points -----------------------------------
#ifndef SHMQ_SANITIZED
#define SHMQ_TEST_COUNTS_MALLOC 1
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void __libc_free(void*);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t n) noexcept {
  note_malloc();
  return __libc_malloc(n);
}
void* calloc(std::size_t count, std::size_t n) noexcept {
  note_malloc();
  return __libc_calloc(count, n);
}
void* realloc(void* p, std::size_t n) noexcept {
  note_malloc();
  return __libc_realloc(p, n);
}
void free(void* p) noexcept {
  if (p != nullptr) note_malloc();
  __libc_free(p);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) noexcept {
  note_malloc();
  return __libc_memalign(alignment, n);
}
void* memalign(std::size_t alignment, std::size_t n) noexcept {
  note_malloc();
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) noexcept {
  note_malloc();
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = __libc_memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
}  // extern "C"
#endif

namespace shmq::test {
namespace {

// The counted window: arms on construction, disarms (and keeps the counts) on stop().
struct Armed {
  std::uint64_t new_calls = 0;
  std::uint64_t malloc_calls = 0;
  Armed() {
    g_new_calls = 0;
    g_malloc_calls = 0;
    t_armed = true;
  }
  void stop() {
    t_armed = false;
    new_calls = g_new_calls.load();
    malloc_calls = g_malloc_calls.load();
  }
  ~Armed() { t_armed = false; }
};

using NoAllocation = ChannelTest;

TEST_F(NoAllocation, TheCountersSeeAnAllocation) {
  Armed armed;
  void* volatile a = ::operator new(24);
  ::operator delete(a);
  void* volatile b = std::malloc(24);
  std::free(b);
  armed.stop();
  EXPECT_GE(armed.new_calls, 1u);
#ifdef SHMQ_TEST_COUNTS_MALLOC
  EXPECT_GE(armed.malloc_calls, 3u);  // operator new's malloc, malloc, and the frees
#endif
}

TEST_F(NoAllocation, PublishPollAndAckDoNotAllocateAfterWarmUp) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));
  Consumer c(ch, "g");
  Producer p(ch, "p");
  std::array<std::byte, 300> payload{};
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::byte>(i);
  PublishOptions po;
  po.key = "biz-key";

  auto round = [&](std::size_t size, int& bad) {
    const auto pub = p.publish(std::span<const std::byte>(payload.data(), size), po);
    if (pub.status != Status::Ok) ++bad;
    auto m = c.poll();
    if (!m || m->payload().size() != size || m->key() != "biz-key") {
      ++bad;
      return;
    }
    if (c.ack(*m) != Status::Ok) ++bad;
  };
  int warm_bad = 0;
  for (int i = 0; i < 1000; ++i) round(static_cast<std::size_t>(i) % payload.size(), warm_bad);
  ASSERT_EQ(warm_bad, 0);

  // 10000 rounds of up to 300 bytes wrap the 1 MiB ring a few times.
  int bad = 0;
  Armed armed;
  for (int i = 0; i < 10000; ++i) round(static_cast<std::size_t>(i * 7) % payload.size(), bad);
  armed.stop();
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(armed.new_calls, 0u) << "operator new was called on the hot path";
  EXPECT_EQ(armed.malloc_calls, 0u) << "malloc/free was called on the hot path";
}

TEST_F(NoAllocation, ClaimCommitAndEmptyPollsDoNotAllocate) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));
  ConsumerOptions co;
  co.wait = Wait::Block;
  Consumer c(ch, "g", co);
  Producer p(ch, "p");

  auto round = [&](std::size_t size, int& bad) {
    Claim cl = p.claim(size);
    if (!cl) {
      ++bad;
      return;
    }
    std::memset(cl.data().data(), 0x5a, size);
    if (cl.commit().status != Status::Ok) ++bad;
    auto m = c.poll(std::chrono::milliseconds(100));
    if (!m || m->payload().size() != size) {
      ++bad;
      return;
    }
    if (c.ack(*m) != Status::Ok) ++bad;
    if (c.poll()) ++bad;  // empty: returns at once
    if (c.poll(std::chrono::microseconds(50))) ++bad;  // empty: a short blocking wait
  };
  int warm_bad = 0;
  for (int i = 0; i < 200; ++i) round(static_cast<std::size_t>(i) * 13 % 2000, warm_bad);
  ASSERT_EQ(warm_bad, 0);

  int bad = 0;
  Armed armed;
  for (int i = 0; i < 2000; ++i) round(static_cast<std::size_t>(i) * 13 % 2000, bad);
  armed.stop();
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(armed.new_calls, 0u) << "operator new was called on the hot path";
  EXPECT_EQ(armed.malloc_calls, 0u) << "malloc/free was called on the hot path";
}

TEST_F(NoAllocation, BatchPollsAndBatchAcksDoNotAllocate) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));
  Consumer c(ch, "g");
  Producer p(ch, "p");
  std::array<Message, 16> got;
  auto round = [&](int i, int& bad) {
    for (int j = 0; j < 16; ++j)
      if (p.publish("batch-message").status != Status::Ok) ++bad;
    std::size_t n = c.poll_batch(got);
    if (n != 16) ++bad;
    if (n && (i % 2 ? c.ack_up_to(got[n - 1]) : c.ack(std::span<const Message>(got.data(), n))) != n) ++bad;
  };
  int warm_bad = 0;
  for (int i = 0; i < 100; ++i) round(i, warm_bad);
  ASSERT_EQ(warm_bad, 0);
  int bad = 0;
  Armed armed;
  for (int i = 0; i < 2000; ++i) round(i, bad);  // wraps the 1 MiB ring
  armed.stop();
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(armed.new_calls, 0u) << "operator new was called on the hot path";
  EXPECT_EQ(armed.malloc_calls, 0u) << "malloc/free was called on the hot path";
}

}  // namespace
}  // namespace shmq::test
