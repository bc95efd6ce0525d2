// libFuzzer target: recovering a durable channel from journal and checkpoint files the fuzzer
// damaged.
//
// A real journal is made once (an Async channel: messages published, a group that acked some and
// whose dead consumer holds others, a checkpoint written at close) and kept as a template. Each
// input is a list of patches (u8 file index, u32 offset, u8 length, bytes; then an opcode byte per
// patch: overwrite, truncate at the offset, or append) applied to a copy of the template's files,
// the CRCs fixed up (journal records and checkpoints) unless the first input byte is odd, so that
// damage reaches the checks behind the CRC. The segment is gone (as after a reboot), so
// Channel::open rebuilds it from the files; then everything is consumed.
//
// It may refuse with a shmq::Error; it must never crash, overflow, hang, or deliver a message whose
// bytes are outside the ring; and a recovered channel must be usable (poll and ack to the end).
#include <shmq/shmq.hpp>

#include <algorithm>
#include <chrono>
#include <optional>

#include "fuzz_support.hpp"

namespace {

using namespace shmq;
using namespace shmq::fuzz;
using namespace std::chrono_literals;

std::string name() { return "fzrec-" + std::to_string(::getpid()); }

ChannelOptions options(const fs::path& dir) {
  ChannelOptions o;
  o.durability = Durability::Async;
  o.ring_bytes = 64 << 10;
  o.max_message_bytes = 4 << 10;
  o.max_producers = 4;
  o.max_groups = 2;
  o.max_consumers = 4;
  o.dedup_window = 16;
  o.journal_dir = dir;
  o.journal_segment_bytes = 4096;
  o.flush_interval = 1ms;
  o.liveness_interval = 1ms;
  return o;
}

// Template files: path relative to DIR/NAME -> bytes, in name order.
using Files = std::vector<std::pair<std::string, std::string>>;

const Files& template_files() {
  static const Files files = [] {
    remove_at_exit("/dev/shm/shmq." + name());
    remove_at_exit("/dev/shm/shmq." + name() + ".dlq");  // the dead letters of its messages
    const fs::path dir = scratch_dir("recovery-template");
    {
      Channel ch = Channel::open(name(), options(dir));
      ch.ensure_group("g", Start::Earliest);
      Producer p(ch, "p");
      for (int i = 0; i < 40; ++i) p.publish("message " + std::to_string(i) + std::string(static_cast<std::size_t>(i) * 7, 'x'), PublishOptions{.key = i % 3 ? "" : "key"});
      Consumer c(ch, "g");
      for (int i = 0; i < 10; ++i)
        if (auto m = c.poll(100ms)) c.ack(*m);
      // Held at the checkpoint: given back by the recovery.
      auto held1 = c.poll(100ms);
      auto held2 = c.poll(100ms);
      (void)held1;
      (void)held2;
      p.flush(1s);
    }  // the journaler's stop writes the last checkpoint
    Channel::remove(name());  // the segment only: the journal stays
    Files out;
    const fs::path jdir = dir / name();
    for (const auto& e : fs::directory_iterator(jdir))
      if (e.is_regular_file() && e.path().filename() != "LOCK")
        out.emplace_back(e.path().filename().string(), read_file(e.path()));
    std::sort(out.begin(), out.end());
    if (out.empty()) fail("the template journal has no files");
    return out;
  }();
  return files;
}

bool is_log(const std::string& n) { return n.size() > 4 && n.compare(n.size() - 4, 4, ".log") == 0; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Files files = template_files();
  static const fs::path dir = scratch_dir("recovery");
  Bytes in(data, size);
  const bool fix_crcs = (in.take(1) & 1) == 0;
  for (int patches = 0; patches < 16 && !in.empty(); ++patches) {
    std::string& f = files[in.take(1) % files.size()].second;
    const std::uint64_t off = f.empty() ? 0 : in.take(4) % (f.size() + 1);
    const std::size_t len = static_cast<std::size_t>(in.take(1));
    const std::string_view b = in.take_bytes(len);
    switch (in.take(1) % 4) {
      case 0:
      case 1:
        f.replace(off, std::min(b.size(), f.size() - off), b);
        break;
      case 2:
        f.resize(off);
        break;
      case 3:
        f.append(b);
        break;
    }
  }
  std::error_code ec;
  const fs::path jdir = dir / name();
  fs::remove_all(jdir, ec);
  fs::create_directories(jdir);
  for (auto& [n, bytes] : files) {
    if (fix_crcs) {
      if (is_log(n)) fix_up_records(bytes);
      else fix_up_checkpoint(bytes);
    }
    write_file(jdir / n, bytes);
  }
  ::unlink(("/dev/shm/shmq." + name()).c_str());
  try {
    Channel ch = Channel::open(name(), options(dir));
    Consumer c(ch, "g");
    for (int i = 0; i < 200; ++i) {
      std::optional<Message> m = c.poll(0ns);
      if (!m) break;
      volatile std::size_t sum = 0;
      for (std::byte x : m->payload()) sum = sum + static_cast<unsigned char>(x);
      (void)c.ack(*m);
    }
    (void)ch.stats();
  } catch (const Error&) {
    // A clear refusal (naming the file) is a correct answer to a damaged journal.
  }
  try {
    if (Channel::exists(name())) Channel::remove(name());
  } catch (const Error&) {
  }
  ::unlink(("/dev/shm/shmq." + name()).c_str());
  return 0;
}
