// posix_mq.cpp: POSIX message queues as a peer. The parent creates the queues (O_EXCL) and unlinks
// them at the end; the children open them by name. Blocking mq_send / mq_receive: the kernel
// queue's natural use. Limits: /proc/sys/fs/mqueue/msg_max and msgsize_max cap a queue for an
// unprivileged process, and RLIMIT_MSGQUEUE its bytes; as root the run raises them (start) and puts
// the /proc values back at the end (stop); otherwise it uses what it may and says so.

#include <fcntl.h>
#include <mqueue.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "transport.hpp"

namespace pingpong {
namespace {

struct MqLimits {
  long msg_max = -1, msgsize_max = -1, queues_max = -1;
  long old_msg_max = -1, old_msgsize_max = -1;  // to restore, when we raised them
  std::string note;
};

long read_long(const char* path) {
  long v = -1;
  if (FILE* f = std::fopen(path, "r")) {
    if (std::fscanf(f, "%ld", &v) != 1) v = -1;
    std::fclose(f);
  }
  return v;
}

bool write_long(const char* path, long v) {
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) return false;
  const bool ok = std::fprintf(f, "%ld\n", v) > 0;
  return std::fclose(f) == 0 && ok;
}

constexpr const char* kMsgMax = "/proc/sys/fs/mqueue/msg_max";
constexpr const char* kMsgsizeMax = "/proc/sys/fs/mqueue/msgsize_max";

// Reads the limits and, as root, raises them to what this run needs (DEPTH messages of SIZE).
MqLimits raise_mq_limits(long depth, long size) {
  MqLimits lim{read_long(kMsgMax), read_long(kMsgsizeMax), read_long("/proc/sys/fs/mqueue/queues_max"), -1, -1, {}};
  char buf[256];
  std::snprintf(buf, sizeof buf, "POSIX mq: /proc/sys/fs/mqueue msg_max %ld, msgsize_max %ld, queues_max %ld",
                lim.msg_max, lim.msgsize_max, lim.queues_max);
  lim.note = buf;
  if (::geteuid() != 0) return lim;
  if (lim.msg_max >= 0 && lim.msg_max < depth && write_long(kMsgMax, depth)) {
    lim.old_msg_max = lim.msg_max;
    lim.msg_max = depth;
    lim.note += "; raised msg_max to " + std::to_string(depth);
  }
  if (lim.msgsize_max >= 0 && lim.msgsize_max < size && write_long(kMsgsizeMax, size)) {
    lim.old_msgsize_max = lim.msgsize_max;
    lim.msgsize_max = size;
    lim.note += "; raised msgsize_max to " + std::to_string(size);
  }
  const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
  if (::setrlimit(RLIMIT_MSGQUEUE, &unlimited) == 0)
    lim.note += "; RLIMIT_MSGQUEUE unlimited";
  else
    lim.note += std::string("; RLIMIT_MSGQUEUE not raised (") + std::strerror(errno) + "): large queues are shortened";
  lim.note += " (root, for this run)";
  return lim;
}

void restore_mq_limits(MqLimits& lim) {
  if (lim.old_msg_max >= 0 && !write_long(kMsgMax, lim.old_msg_max))
    lim.note += "; could NOT restore msg_max to " + std::to_string(lim.old_msg_max);
  if (lim.old_msgsize_max >= 0 && !write_long(kMsgsizeMax, lim.old_msgsize_max))
    lim.note += "; could NOT restore msgsize_max to " + std::to_string(lim.old_msgsize_max);
}

// Opens (creates) a queue of DEPTH messages of SIZE bytes. Returns -1 and sets WHY when it cannot.
mqd_t mq_create(const std::string& name, long depth, std::size_t size, std::string& why) {
  mq_attr attr{};
  attr.mq_maxmsg = depth;
  attr.mq_msgsize = static_cast<long>(size);
  ::mq_unlink(name.c_str());
  const mqd_t q = ::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
  if (q == static_cast<mqd_t>(-1))
    why = "mq_open(" + name + ", maxmsg " + std::to_string(depth) + ", msgsize " + std::to_string(size) +
          "): " + std::strerror(errno);
  return q;
}

struct MqEnd {
  mqd_t q;
  std::vector<std::byte> buf;
  MqEnd(const std::string& name, std::size_t size) : q(::mq_open(name.c_str(), O_RDWR)), buf(size) {
    if (q == static_cast<mqd_t>(-1)) die("mq_open(%s): %s", name.c_str(), std::strerror(errno));
  }
  ~MqEnd() { ::mq_close(q); }
  MqEnd(const MqEnd&) = delete;
  MqEnd& operator=(const MqEnd&) = delete;
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    while (::mq_send(q, reinterpret_cast<const char*>(m.data()), m.size(), 0) != 0)
      if (errno != EINTR) die("mq_send of sequence %" PRIu64 ": %s", seq, std::strerror(errno));
  }
  std::span<const std::byte> recv(std::uint64_t seq, Waiter&) {
    for (;;) {
      const ssize_t n = ::mq_receive(q, reinterpret_cast<char*>(buf.data()), buf.size(), nullptr);
      if (n >= 0) return {buf.data(), static_cast<std::size_t>(n)};
      if (errno == EINTR) continue;
      die("mq_receive at sequence %" PRIu64 ": %s", seq, std::strerror(errno));
    }
  }
  void release() {}
};

MqLimits g_limits;  // this process's: raised by start, restored by stop

void start(Session& s) {
  const std::uint64_t largest = *std::max_element(s.cfg.sizes.begin(), s.cfg.sizes.end());
  g_limits = raise_mq_limits(static_cast<long>(peer_depth(Frames::kMinSize, s.cfg.mq_depth)), static_cast<long>(largest));
}

void stop(Session& s) {
  restore_mq_limits(g_limits);
  s.notes.push_back(g_limits.note);
}

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  const MqLimits& lim = g_limits;
  Row r = make_row("mq", "POSIX mq", "blocking mq_receive", Kind::Peer, p);
  const std::string base = "/shmqpp-" + std::to_string(::getpid());
  const std::string ping = base + "-ping", pong = base + "-pong", stream = base + "-stream";
  std::string why;
  long depth = static_cast<long>(peer_depth(p.size, cfg.mq_depth));
  if (lim.msg_max > 0 && lim.msg_max < depth) depth = lim.msg_max;  // not root: what we may
  mqd_t qs[3] = {mq_create(ping, 1, p.size, why), mq_create(pong, 1, p.size, why), static_cast<mqd_t>(-1)};
  if (qs[0] != static_cast<mqd_t>(-1) && qs[1] != static_cast<mqd_t>(-1)) {
    qs[2] = mq_create(stream, depth, p.size, why);
    // Past RLIMIT_MSGQUEUE (bytes of all our queues) mq_open says EMFILE: halve the depth until it fits.
    while (qs[2] == static_cast<mqd_t>(-1) && errno == EMFILE && depth > 1)
      qs[2] = mq_create(stream, depth /= 2, p.size, why);
  }
  if (qs[0] == static_cast<mqd_t>(-1) || qs[1] == static_cast<mqd_t>(-1) || qs[2] == static_cast<mqd_t>(-1)) {
    r.skipped = why;
  } else {
    r.wait += " (maxmsg " + std::to_string(depth) + ")";
    const auto end = [&](const std::string& name) { return MqEnd(name, p.size); };
    run_both(r, cfg, p, p.peer_warmup, ping, pong, stream, end, end);
  }
  for (mqd_t q : qs)
    if (q != static_cast<mqd_t>(-1)) ::mq_close(q);
  for (const auto& name : {ping, pong, stream}) ::mq_unlink(name.c_str());
  return r;
}

const Register reg{{.key = "mq", .order = 40, .kind = Kind::Peer, .run = run, .start = start, .stop = stop}};

}  // namespace
}  // namespace pingpong
