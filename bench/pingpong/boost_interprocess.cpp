// boost_interprocess.cpp: Boost.Interprocess message_queue (header-only) as a peer: a queue in a
// named shared-memory segment, guarded by a process-shared mutex and conditions. The parent
// creates the queues; the children open them. Blocking send / receive.

#include <boost/interprocess/ipc/message_queue.hpp>

#include "transport.hpp"

namespace pingpong {
namespace {

namespace bip = boost::interprocess;

struct BoostEnd {
  bip::message_queue q;
  std::vector<std::byte> buf;
  BoostEnd(const std::string& name, std::size_t size) : q(bip::open_only, name.c_str()), buf(size) {}
  void send(std::span<const std::byte> m, std::uint64_t) { q.send(m.data(), m.size(), 0); }
  std::span<const std::byte> recv(std::uint64_t, Waiter&) {
    bip::message_queue::size_type got = 0;
    unsigned int prio = 0;
    q.receive(buf.data(), buf.size(), got, prio);
    return {buf.data(), static_cast<std::size_t>(got)};
  }
  void release() {}
};

void start(Session& s) {
  s.notes.push_back("Boost.Interprocess message_queue (Boost " + std::to_string(BOOST_VERSION / 100000) + "." +
                    std::to_string(BOOST_VERSION / 100 % 1000) + "): ping/pong max_num_msg 1");
}

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  Row r = make_row("boost", "Boost.Interprocess mq", "blocking receive", Kind::Peer, p);
  const std::string base = "shmqpp-boost-" + std::to_string(::getpid());
  const std::string ping = base + "-ping", pong = base + "-pong", stream = base + "-stream";
  auto remove_all = [&] {
    for (const auto& name : {ping, pong, stream}) bip::message_queue::remove(name.c_str());
  };
  remove_all();
  const std::uint64_t depth = peer_depth(p.size, cfg.queue_depth);
  try {
    bip::message_queue a(bip::create_only, ping.c_str(), 1, p.size);
    bip::message_queue b(bip::create_only, pong.c_str(), 1, p.size);
    bip::message_queue st(bip::create_only, stream.c_str(), depth, p.size);
  } catch (const std::exception& e) {
    r.skipped = std::string("creating the queues: ") + e.what();
    remove_all();
    return r;
  }
  r.wait += " (max_num_msg " + std::to_string(depth) + ")";
  const auto end = [&](const std::string& name) { return BoostEnd(name, p.size); };
  run_both(r, cfg, p, p.peer_warmup, ping, pong, stream, end, end);
  remove_all();
  return r;
}

const Register reg{{.key = "boost", .order = 42, .kind = Kind::Peer, .run = run, .start = start}};

}  // namespace
}  // namespace pingpong
