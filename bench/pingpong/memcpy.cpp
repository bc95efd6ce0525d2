// memcpy.cpp: a reference, not a transport: the floor of throughput for large messages. One pinned
// process copies messages of the size, one after another, from kTemplates hot buffers (what a
// producer's buffers are) into a 64 MiB destination walked like a ring (pre-faulted), for
// --memcpy seconds: bytes per second of the producer's copy alone, no second process, no check.

#include "transport.hpp"

namespace pingpong {
namespace {

void copy_for(std::size_t size, double seconds, PairControl& c) {
  const std::size_t dest_bytes = std::size_t{64} << 20;
  std::vector<std::byte> dest(dest_bytes, std::byte{1});  // touched: no page fault in the loop
  Frames frames(size);
  const std::size_t slots = dest_bytes / size;
  const auto limit = static_cast<std::uint64_t>(seconds * 1e9);
  std::uint64_t copied = 0;
  const std::uint64_t t0 = mono_ns();
  std::uint64_t now = t0;
  for (std::uint64_t i = 0; now - t0 < limit; ++i) {
    std::memcpy(dest.data() + (i % slots) * size, frames.make(i).data(), size);
    asm volatile("" : : "r"(dest.data()) : "memory");  // the copy is not optimised away
    copied += size;
    if ((i & 63u) == 0) now = mono_ns();
  }
  now = mono_ns();
  c.bytes_per_s = static_cast<double>(copied) / (static_cast<double>(now - t0) / 1e9);
}

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  Row r = make_row("memcpy", "memcpy (1 core)", "-", Kind::Reference, p);
  r.has_latency = false;
  Shared<PairControl> control;
  PairControl& c = *control;
  if (!run_children(limits(cfg, p), label(r, "").c_str(), c,
                    {{"memcpy", cfg.cpu_a, [&] { copy_for(p.size, cfg.memcpy_s, c); }}}))
    return r;
  r.throughput.ok = c.bytes_per_s > 0;
  r.throughput.mb_per_s = c.bytes_per_s / 1e6;
  r.throughput.msgs_per_s = c.bytes_per_s / static_cast<double>(p.size);
  r.throughput.seconds = cfg.memcpy_s;
  r.throughput.disturbance = {c.others_cpu_pct, c.steal_pct};
  return r;
}

const Register reg{{.key = "memcpy", .order = 30, .kind = Kind::Reference, .run = run}};

}  // namespace
}  // namespace pingpong
