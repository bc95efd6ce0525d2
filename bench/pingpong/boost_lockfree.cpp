// boost_lockfree.cpp: Boost.Lockfree's spsc_queue placed in shared memory, as a peer: the Boost
// SPSC ring users know, one producer process and one consumer process.
//
// Why it works across processes (checked here, not assumed):
//   - with a compile-time capacity (boost::lockfree::capacity<N>) the queue is
//     compile_time_sized_ringbuffer: its slots are an array member of the object itself
//     (boost::aligned_storage), and its read and write indices are std::atomic<std::size_t>
//     (Boost picks <atomic> under GCC and C++11 or later), each on its own cache line. No pointer,
//     no allocator, no lock: every address it uses is computed from `this`, so the object works
//     wherever each process maps it. Each child maps the segment itself (mmap of a memfd made by
//     the parent), at an address of its own choosing;
//   - it is lock-free only if those atomics are: a static_assert says std::atomic<std::size_t> is
//     always lock-free (on x86-64 a plain aligned load / store), and a queue whose is_lock_free()
//     says otherwise at run time is SKIPPED. Lock-free operations "should also be address-free"
//     ([atomics.lockfree]); with GCC on x86-64 they are plain instructions on the memory (no
//     side table of locks keyed by address, as a non-lock-free std::atomic would use), which is
//     what sharing them between processes needs;
//   - its element type is fixed at compile time: a Slot of exactly the message size (64 B, 1 KiB
//     and 64 KiB are built; another --sizes is SKIPPED), trivially copyable, so the queue's
//     copy-in on push and the in-place front() / pop() on the consumer side are what it does for
//     any trivial type; the destructor is never needed (trivial elements; the segment is dropped);
//   - capacities are compile-time too: 1 MiB of slots for ping and pong, 64 MiB for the stream
//     (the defaults of the other rings; --ring-mib and --lat-ring-kib do not change them).
// What it does per message (Boost 1.74): push loads both indices (no cached copy of the other
// side's index: the consumer's line moves on every push), copies the element in, stores the
// write index (release); the consumer's read_available() loads both, front() reads in place,
// pop() stores the read index (release).

#include <sys/mman.h>

#include <boost/lockfree/spsc_queue.hpp>

#include "transport.hpp"

namespace pingpong {
namespace {

static_assert(std::atomic<std::size_t>::is_always_lock_free, "spsc_queue's indices must be lock-free to be shared");

template <std::size_t Size>
struct Slot {
  std::uint64_t words[Size / 8];
};

template <std::size_t Size, std::size_t Capacity>
using Queue = boost::lockfree::spsc_queue<Slot<Size>, boost::lockfree::capacity<Capacity>>;

// A queue constructed (placement new) in a memfd segment by the parent; each child maps it anew.
template <class Q>
struct Segment {
  int fd = -1;
  std::string why;  // set when it could not be made
  bool lock_free = false;
  Segment() {
    fd = ::memfd_create("shmq-bench-spsc", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(sizeof(Q))) != 0) {
      why = std::string("memfd_create / ftruncate: ") + std::strerror(errno);
      return;
    }
    void* p = ::mmap(nullptr, sizeof(Q), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      why = std::string("mmap: ") + std::strerror(errno);
      return;
    }
    const Q* q = new (p) Q();
    lock_free = q->is_lock_free();
    ::munmap(p, sizeof(Q));
  }
  ~Segment() {
    if (fd >= 0) ::close(fd);
  }
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  bool ok() const { return why.empty() && lock_free; }
};

// The segment mapped in this process; unmapped when the end goes.
template <class Q>
struct Mapping {
  Q* q = nullptr;
  explicit Mapping(const Segment<Q>& s) {
    void* p = ::mmap(nullptr, sizeof(Q), PROT_READ | PROT_WRITE, MAP_SHARED, s.fd, 0);
    if (p == MAP_FAILED) die("mmap of the spsc_queue segment: %s", std::strerror(errno));
    q = std::launder(static_cast<Q*>(p));
  }
  ~Mapping() { ::munmap(q, sizeof(Q)); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
};

template <std::size_t Size, class Q>
struct Tx {
  Mapping<Q> m;
  Waiter w;
  void send(std::span<const std::byte> bytes, std::uint64_t seq) {
    // The frame's bytes are a Slot (an array of words, implicit-lifetime): push copies it in.
    if (bytes.size() != Size || reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(Slot<Size>) != 0)
      die("spsc_queue: message %" PRIu64 " of %zu bytes is not an aligned Slot of %zu", seq, bytes.size(), Size);
    const auto& slot = *reinterpret_cast<const Slot<Size>*>(bytes.data());
    if (!m.q->push(slot)) {
      w.reset();
      while (!m.q->push(slot)) w.spin(seq);
    }
  }
};

template <std::size_t Size, class Q>
struct Rx {
  Mapping<Q> m;
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) {
    if (m.q->read_available() == 0) {
      w.reset();
      while (m.q->read_available() == 0) w.spin(seq);
    }
    return {reinterpret_cast<const std::byte*>(&m.q->front()), Size};
  }
  void release() { m.q->pop(); }
};

template <std::size_t Size>
Row run_size(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  using Lat = Queue<Size, (std::size_t{1} << 20) / Size>;
  using Tp = Queue<Size, (std::size_t{64} << 20) / Size>;
  Row r = make_row("boost-lockfree", "Boost.Lockfree spsc_queue (shm)", "spin", Kind::Peer, p);
  Segment<Lat> ping, pong;
  Segment<Tp> stream;
  for (const std::string* why : {&ping.why, &pong.why, &stream.why})
    if (!why->empty()) {
      r.skipped = *why;
      return r;
    }
  if (!ping.ok() || !stream.ok()) {
    r.skipped = "spsc_queue::is_lock_free() is false here: its indices would need a lock";
    return r;
  }
  r.wait += " (capacity " + std::to_string((std::size_t{64} << 20) / Size) + ")";
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* samples) {
        Tx<Size, Lat> out{Mapping<Lat>(ping), Waiter(cfg.stall_s, "waiting for queue space")};
        Rx<Size, Lat> in{Mapping<Lat>(pong)};
        run_pinger(cfg, p, c, samples, out, in);
      },
      [&](PairControl& c) {
        Tx<Size, Lat> out{Mapping<Lat>(pong), Waiter(cfg.stall_s, "waiting for queue space")};
        Rx<Size, Lat> in{Mapping<Lat>(ping)};
        run_ponger(cfg, p, c, out, in);
      });
  r.throughput = throughput_case(
      cfg, p, p.ring_warmup, label(r, "throughput"),
      [&](PairControl& c) {
        Tx<Size, Tp> out{Mapping<Tp>(stream), Waiter(cfg.stall_s, "waiting for queue space")};
        run_producer(cfg, p, p.ring_warmup, c, out);
      },
      [&](PairControl& c) {
        Rx<Size, Tp> in{Mapping<Tp>(stream)};
        run_consumer(cfg, p, p.ring_warmup, c, in);
      });
  return r;
}

Row run(Session& s, const Plan& p) {
  switch (p.size) {
    case 64: return run_size<64>(s, p);
    case 1024: return run_size<1024>(s, p);
    case 65536: return run_size<65536>(s, p);
    default: {
      Row r = make_row("boost-lockfree", "Boost.Lockfree spsc_queue (shm)", "spin", Kind::Peer, p);
      r.skipped = "its element size is a compile-time constant: built for 64 B, 1 KiB and 64 KiB only";
      return r;
    }
  }
}

const Register reg{{.key = "boost-lockfree", .order = 43, .kind = Kind::Peer, .run = run}};

}  // namespace
}  // namespace pingpong
