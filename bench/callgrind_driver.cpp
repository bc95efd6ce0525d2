// shmq_callgrind_driver: publish, poll and ack of 64-byte messages in one thread, made to be
// counted by valgrind --tool=callgrind (bench/callgrind.sh runs it; it measures nothing itself).
//
// Channel: Durability::Memory, 1 MiB ring, one producer, one consumer (Wait::Spin), in this
// process. It first sends a warm-up of --warmup messages (several laps of the ring, so the ring's
// batched zeroing of freed space is in the steady state it counts), then --messages more, each one
// through cg::publish_poll (publish it, poll it back) and cg::ack (ack it). Those two functions
// exist so that callgrind can count them alone: --toggle-collect='cg::publish_poll*' collects the
// instructions inside publish + poll only; divided by --messages, that is the cost of one message.
// Every message polled is checked (its size and an 8-byte sequence tag); a wrong one exits 1.
//
// --exclusive: the producer and the consumer are exclusive (ProducerOptions / ConsumerOptions::
// exclusive: claims and takes with plain stores).
//
// --batch N: N publishes, then one poll_batch() of N (cg::publish_poll_batch), then one ack() of
// the batch (cg::ack_batch); --messages is rounded up to a multiple of N.
//
// Usage: shmq_callgrind_driver [--messages N] [--warmup N] [--exclusive] [--batch N]

#include <shmq/shmq.hpp>

#include <unistd.h>

#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cg {

// What callgrind counts: one publish and the poll that takes the message back.
[[gnu::noinline]] std::optional<shmq::Message> publish_poll(shmq::Producer& p, shmq::Consumer& c,
                                                            std::span<const std::byte> payload) {
  const shmq::Published r = p.publish(payload);
  if (r.status != shmq::Status::Ok) return std::nullopt;
  return c.poll();
}

[[gnu::noinline]] shmq::Status ack(shmq::Consumer& c, const shmq::Message& m) { return c.ack(m); }

// The same for a batch: OUT.size() publishes of 64 B tagged FIRST, FIRST + 1, ..., then one
// poll_batch(); one ack() of the batch.
[[gnu::noinline]] std::size_t publish_poll_batch(shmq::Producer& p, shmq::Consumer& c, std::uint64_t first,
                                                 std::span<shmq::Message> out) {
  std::array<std::byte, 64> payload{};
  for (std::uint64_t i = 0; i < out.size(); ++i) {
    const std::uint64_t seq = first + i;
    std::memcpy(payload.data(), &seq, sizeof seq);
    if (p.publish(std::span<const std::byte>(payload)).status != shmq::Status::Ok) return 0;
  }
  return c.poll_batch(out);
}

[[gnu::noinline]] std::size_t ack_batch(shmq::Consumer& c, std::span<const shmq::Message> batch) { return c.ack(batch); }

}  // namespace cg

namespace {

[[noreturn]] void fail(const char* what, std::uint64_t seq) {
  std::fprintf(stderr, "*** FAIL shmq_callgrind_driver: %s at message %" PRIu64 "\n", what, seq);
  std::exit(1);
}

// Publishes, polls back, checks and acks message SEQ; through cg:: only when MEASURED.
void one_message(shmq::Producer& p, shmq::Consumer& c, std::uint64_t seq, bool measured) {
  std::array<std::byte, 64> payload{};
  std::memcpy(payload.data(), &seq, sizeof seq);
  std::optional<shmq::Message> m;
  if (measured) {
    m = cg::publish_poll(p, c, payload);
  } else if (p.publish(std::span<const std::byte>(payload)).status == shmq::Status::Ok) {
    m = c.poll();
  }
  if (!m) fail("publish or poll failed", seq);
  std::uint64_t tag = 0;
  if (m->payload().size() != payload.size()) fail("wrong size", seq);
  std::memcpy(&tag, m->payload().data(), sizeof tag);
  if (tag != seq) fail("wrong message", seq);
  if ((measured ? cg::ack(c, *m) : c.ack(*m)) != shmq::Status::Ok) fail("ack failed", seq);
}

// Messages FIRST .. FIRST + OUT.size() - 1 as one batch, checked and acked.
void one_batch(shmq::Producer& p, shmq::Consumer& c, std::uint64_t first, std::span<shmq::Message> out, bool measured) {
  std::size_t n = 0;
  if (measured) {
    n = cg::publish_poll_batch(p, c, first, out);
  } else {
    std::array<std::byte, 64> payload{};
    for (std::uint64_t i = 0; i < out.size(); ++i) {
      const std::uint64_t seq = first + i;
      std::memcpy(payload.data(), &seq, sizeof seq);
      if (p.publish(std::span<const std::byte>(payload)).status != shmq::Status::Ok) fail("publish failed", seq);
    }
    n = c.poll_batch(out);
  }
  if (n != out.size()) fail("publish or poll_batch failed", first);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t tag = 0;
    if (out[i].payload().size() != 64) fail("wrong size", first + i);
    std::memcpy(&tag, out[i].payload().data(), sizeof tag);
    if (tag != first + i) fail("wrong message", first + i);
  }
  if ((measured ? cg::ack_batch(c, out) : c.ack(std::span<const shmq::Message>(out))) != n) fail("ack failed", first);
}

std::uint64_t count_arg(const char* text) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0' || v == 0) {
    std::fprintf(stderr, "shmq_callgrind_driver: expected a positive count, got %s\n", text);
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t messages = 100'000, warmup = 30'000;
  bool exclusive = false;
  std::uint64_t batch = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--exclusive") {
      exclusive = true;
    } else if (a == "--batch" && i + 1 < argc) {
      batch = count_arg(argv[++i]);
      if (batch > 64) {
        std::fprintf(stderr, "shmq_callgrind_driver: --batch is at most 64 (max_in_flight)\n");
        return 2;
      }
    } else if (a == "--messages" && i + 1 < argc) {
      messages = count_arg(argv[++i]);
    } else if (a == "--warmup" && i + 1 < argc) {
      warmup = count_arg(argv[++i]);
    } else {
      std::fprintf(a == "--help" ? stdout : stderr, "usage: %s [--messages N] [--warmup N] [--exclusive] [--batch N]\n", argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  char dir[] = "/tmp/shmq-callgrind-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::perror("*** FAIL shmq_callgrind_driver: mkdtemp");
    return 1;
  }
  const std::string name = "shmqcg_" + std::to_string(::getpid());
  int rc = 0;
  try {
    shmq::ChannelOptions o;
    o.ring_bytes = std::size_t{1} << 20;
    o.max_message_bytes = o.ring_bytes / 4;  // the channel's limit
    o.durability = shmq::Durability::Memory;
    o.journal_dir = dir;
    shmq::Channel ch = shmq::Channel::open(name, o);
    shmq::Consumer consumer(ch, "callgrind",
                            {.start = shmq::Start::Earliest, .wait = shmq::Wait::Spin, .max_in_flight = 64, .exclusive = exclusive});
    shmq::Producer producer(ch, "callgrind", {.exclusive = exclusive});
    if (batch) {
      std::vector<shmq::Message> out(batch);
      warmup = (warmup + batch - 1) / batch * batch;
      messages = (messages + batch - 1) / batch * batch;
      for (std::uint64_t s = 0; s < warmup; s += batch) one_batch(producer, consumer, s, out, false);
      for (std::uint64_t s = warmup; s < warmup + messages; s += batch) one_batch(producer, consumer, s, out, true);
      std::printf("shmq_callgrind_driver: %" PRIu64 " messages of 64 B in batches of %" PRIu64
                  " through cg::publish_poll_batch and cg::ack_batch after %" PRIu64 " warm-up\n", messages, batch, warmup);
    } else {
      for (std::uint64_t s = 0; s < warmup; ++s) one_message(producer, consumer, s, false);
      for (std::uint64_t s = warmup; s < warmup + messages; ++s) one_message(producer, consumer, s, true);
      std::printf("shmq_callgrind_driver: %" PRIu64 " messages of 64 B through cg::publish_poll and cg::ack after %" PRIu64
                  " warm-up\n", messages, warmup);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL shmq_callgrind_driver: %s\n", e.what());
    rc = 1;
  }
  try {
    shmq::Channel::remove(name, dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL shmq_callgrind_driver: removing %s: %s\n", name.c_str(), e.what());
    rc = 1;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}
