// libFuzzer target: attaching to, and using, a channel segment whose bytes the fuzzer wrote.
//
// A valid segment is made once (a Memory channel with a few messages published, one group with a
// consumer that holds two of them and died) and kept as a template. Each input is a list of
// patches, (u32 offset, u8 length, bytes), applied to a copy of the template, which is then written
// to /dev/shm/shmq.NAME. An honest process attaches and publishes, claims, polls, acks, nacks and
// reads stats. It may get a Status (Corrupt, WouldBlock, ...) or a shmq::Error; it must never
// crash, touch memory outside the mapping (ASan, and a SIGSEGV/SIGBUS is a crash), or hang
// (libFuzzer's -timeout).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <shmq/shmq.hpp>

#include <chrono>
#include <optional>

#include "fuzz_support.hpp"

namespace {

using namespace shmq;
using namespace shmq::fuzz;
using namespace std::chrono_literals;

ChannelOptions options() {
  ChannelOptions o;
  o.durability = Durability::Memory;
  o.ring_bytes = 64 << 10;
  o.max_message_bytes = 4 << 10;
  o.max_producers = 4;
  o.max_groups = 2;
  o.max_consumers = 4;
  o.dedup_window = 16;
  o.liveness_interval = 1ms;
  return o;
}

// Fixed at the first call, in the fuzzing process: the child that template_bytes() forks must
// open the same channel (with its own pid it made another one, and left it behind).
const std::string& name() {
  static const std::string n = "fzseg-" + std::to_string(::getpid());
  return n;
}
std::string path() { return "/dev/shm/shmq." + name(); }

// The template: made by this process, then its consumer's slot is given a dead owner by making it
// in a child that exits holding two messages.
const std::string& template_bytes() {
  static const std::string bytes = [] {
    ::unlink(path().c_str());
    remove_at_exit(path());
    remove_at_exit(path() + ".dlq");  // the dead letters of its messages
    {
      Channel ch = Channel::open(name(), options());
      ch.ensure_group("g", Start::Earliest);
      Producer p(ch, "p");
      for (int i = 0; i < 6; ++i) p.publish("message " + std::to_string(i), PublishOptions{.key = i % 2 ? "k" : ""});
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      Channel ch = Channel::open(name(), options());
      Consumer c(ch, "g");
      auto m1 = c.poll(0ns);
      auto m2 = c.poll(0ns);
      (void)m1;
      (void)m2;
      ::_exit(0);  // no destructor: the slot keeps what it holds, its owner is dead
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::string b = read_file(path());
    ::unlink(path().c_str());
    if (b.empty()) fail("could not make the template segment");
    return b;
  }();
  return bytes;
}

void use(Channel& ch) {
  (void)ch.stats();
  Producer p(ch, "p");
  PublishOptions po;
  po.timeout = 1ms;
  for (int i = 0; i < 3; ++i) (void)p.publish("honest " + std::to_string(i), po);
  if (Claim c = p.claim(100, po); c) {
    std::memset(c.data().data(), 'z', c.data().size());
    (void)c.commit();
  }
  Consumer c(ch, "g");
  for (int i = 0; i < 12; ++i) {
    std::optional<Message> m = c.poll(0ns);
    if (!m) {
      if (c.status() == Status::Corrupt) break;
      continue;
    }
    volatile std::size_t sum = 0;  // read every byte the message claims to have
    for (std::byte b : m->payload()) sum = sum + static_cast<unsigned char>(b);
    for (char k : m->key()) sum = sum + static_cast<unsigned char>(k);
    if (i % 3 == 2) (void)c.nack(*m);
    else (void)c.ack(*m);
  }
  (void)ch.stats();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string seg = template_bytes();
  Bytes in(data, size);
  for (int patches = 0; patches < 64 && !in.empty(); ++patches) {
    const std::uint64_t off = in.take(4) % seg.size();
    const std::size_t len = static_cast<std::size_t>(in.take(1));
    const std::string_view b = in.take_bytes(std::min<std::size_t>(len, seg.size() - off));
    std::memcpy(seg.data() + off, b.data(), b.size());
  }
  ::unlink(path().c_str());
  const int fd = ::open(path().c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) fail("could not create the segment file");
  const bool written = ::write(fd, seg.data(), seg.size()) == static_cast<ssize_t>(seg.size());
  ::close(fd);
  if (!written) fail("could not write the segment file");
  try {
    Channel ch = Channel::open(name(), options());
    use(ch);
  } catch (const Error&) {
    // A clear refusal is a correct answer to a corrupt segment.
  }
  ::unlink(path().c_str());
  return 0;
}
