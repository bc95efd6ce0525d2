// unix_socket.cpp: a Unix domain socket as a peer: a SOCK_SEQPACKET pair made before fork (message
// boundaries kept; one message per send, as every transport here). Blocking send / recv, default
// buffer sizes (the note says SO_SNDBUF).

#include <sys/socket.h>

#include "transport.hpp"

namespace pingpong {
namespace {

struct SockEnd {
  int fd;
  std::vector<std::byte> buf;
  SockEnd(int f, std::size_t size) : fd(f), buf(size + 8) {}  // 8 more: a longer message shows as one
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    for (;;) {
      const ssize_t n = ::send(fd, m.data(), m.size(), MSG_NOSIGNAL);
      if (n == static_cast<ssize_t>(m.size())) return;
      if (n < 0 && errno == EINTR) continue;
      die("send of sequence %" PRIu64 ": %s", seq, n < 0 ? std::strerror(errno) : "short send");
    }
  }
  std::span<const std::byte> recv(std::uint64_t seq, Waiter&) {
    for (;;) {
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n > 0) return {buf.data(), static_cast<std::size_t>(n)};
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) die("recv at sequence %" PRIu64 ": the other end closed", seq);
      die("recv at sequence %" PRIu64 ": %s", seq, std::strerror(errno));
    }
  }
  void release() {}
};

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  Row r = make_row("uds", "Unix socket (SEQPACKET)", "blocking recv", Kind::Peer, p);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    r.skipped = std::string("socketpair(AF_UNIX, SOCK_SEQPACKET): ") + std::strerror(errno);
    return r;
  }
  int sndbuf = 0;
  socklen_t len = sizeof sndbuf;
  ::getsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &len);
  const std::string note = "Unix socket: socketpair(AF_UNIX, SOCK_SEQPACKET), SO_SNDBUF " + std::to_string(sndbuf) +
                           " B (default)";
  if (std::find(s.notes.begin(), s.notes.end(), note) == s.notes.end()) s.notes.push_back(note);
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* samples) {
        SockEnd end(sv[0], p.size);
        run_pinger(cfg, p, c, samples, end, end);
      },
      [&](PairControl& c) {
        SockEnd end(sv[1], p.size);
        run_ponger(cfg, p, c, end, end);
      });
  ::close(sv[0]);
  ::close(sv[1]);
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    std::fprintf(stderr, "*** FAIL [Unix socket]: socketpair: %s\n", std::strerror(errno));
    return r;
  }
  r.throughput = throughput_case(
      cfg, p, p.peer_warmup, label(r, "throughput"),
      [&](PairControl& c) {
        SockEnd out(sv[0], p.size);
        run_producer(cfg, p, p.peer_warmup, c, out);
      },
      [&](PairControl& c) {
        SockEnd in(sv[1], p.size);
        run_consumer(cfg, p, p.peer_warmup, c, in);
      });
  ::close(sv[0]);
  ::close(sv[1]);
  return r;
}

const Register reg{{.key = "uds", .order = 41, .kind = Kind::Peer, .run = run}};

}  // namespace
}  // namespace pingpong
