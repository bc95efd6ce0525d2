// shmq_gate_bench: what one reclaim's look at the consumers costs, the exact gate against the
// cheap one (ChannelState::gate() and cheap_gate(), shm/channel.cpp), on a channel whose consumers
// hold messages, in one process (the words it reads are in this core's cache: the cross-core
// cost of the lines is on top, and grows with what is read).
//
// For C consumers of one group, each holding H messages (polled, not acked), and one message
// given back: the median of 15 runs of 2000 calls each, in ns per call.
//
// usage: shmq_gate_bench
#include <shmq/shmq.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "shm/channel_state.hpp"

namespace {

template <class F>
double ns_per_call(F&& f) {
  std::vector<double> runs;
  for (int r = 0; r < 15; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::uint64_t sink = 0;
    for (int i = 0; i < 2000; ++i) sink += f();
    const auto t1 = std::chrono::steady_clock::now();
    if (sink == 42) std::printf(" ");  // keeps the calls
    runs.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / 2000);
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace

int main() {
  const std::string dir = "/tmp/shmq-gate-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  int rc = 0;
  std::printf("| consumers | held each | exact gate (ns) | cheap gate (ns) | exact / cheap |\n|---:|---:|---:|---:|---:|\n");
  for (const unsigned consumers : {1u, 8u, 32u}) {
    for (const unsigned held : {1u, 32u}) {
      const std::string name = "shmqgate_" + std::to_string(::getpid()) + "_" + std::to_string(consumers) + "_" + std::to_string(held);
      try {
        shmq::ChannelOptions o;
        o.durability = shmq::Durability::Memory;
        o.journal_dir = dir;
        o.ring_bytes = 4u << 20;
        o.max_consumers = 64;
        shmq::Channel ch = shmq::Channel::open(name, o);
        ch.ensure_group("g");
        shmq::Producer p(ch, "p");
        std::vector<shmq::Consumer> cs;
        std::vector<shmq::Message> keep;
        for (unsigned c = 0; c < consumers; ++c) {
          cs.emplace_back(ch, "g", shmq::ConsumerOptions{.max_in_flight = 64});
          for (unsigned h = 0; h < held; ++h) {
            if (p.publish("held").status != shmq::Status::Ok) throw std::runtime_error("publish failed");
            auto m = cs.back().poll();
            if (!m) throw std::runtime_error("poll failed");
            keep.push_back(*m);
          }
        }
        if (cs[0].nack(keep[0]) != shmq::Status::Ok) throw std::runtime_error("nack failed");  // one on the list
        shmq::detail::ChannelState& s = ch.state();
        const std::uint64_t cheap = s.cheap_gate(), exact = s.gate();
        if (cheap == shmq::detail::ChannelState::kNoCheapGate || cheap > exact) throw std::runtime_error("cheap gate above the exact one");
        const double e = ns_per_call([&] { return s.gate(); });
        const double c = ns_per_call([&] { return s.cheap_gate(); });
        std::printf("| %u | %u | %.0f | %.0f | %.1fx |\n", consumers, held, e, c, e / c);
      } catch (const std::exception& ex) {
        std::fprintf(stderr, "*** FAIL shmq_gate_bench: %u consumers, %u held: %s\n", consumers, held, ex.what());
        rc = 1;
      }
      try {
        shmq::Channel::remove(name, dir);
      } catch (...) {
      }
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}
