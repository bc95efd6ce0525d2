// dlq: the dead letters of a channel. A message delivered max_deliveries times is copied to the
// channel NAME.dlq (inner id, key and payload kept) and kept there by its group "dead-letters"
// until somebody acks it there.
//
// Listing must not touch the dead letters: polling them through "dead-letters" would count a
// delivery each time (and after max_deliveries listings move them on to NAME.dlq.dlq). So a
// listing reads through a group of its own, "dlq-browse-PID", created at the oldest record the
// ring still holds and removed at the end (a browse group left by a killed listing is removed by
// the next one), and shows the records that "dead-letters" has not acked: at or after its cursor,
// or held by one of its consumers, or given back to it.
//
// --requeue takes them through "dead-letters": publishes each to NAME (a new inner id, from the
// producer "dlq-requeue"; key and payload kept), waits until they are durable when NAME is, and
// only then acks them in NAME.dlq. A requeue that dies half-way leaves the unacked ones in the dlq.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <shmq/shmq.hpp>
#include <string>
#include <vector>

#include "shm/channel_state.hpp"
#include "tools/commands.hpp"
#include "tools/output.hpp"

namespace shmq::tool {
namespace {

using namespace std::chrono_literals;

constexpr const char* kDeadLettersGroup = "dead-letters";
constexpr const char* kBrowsePrefix = "dlq-browse-";

// What group GROUP of CH has not acked: everything at or after `next`, and `held` (held by its
// consumers or on its give-back list). Read from the segment the way stats() and the journal's
// checkpoint read it: the cursor first, then the list and the consumers under the list's lock.
struct Unacked {
  bool found = false;
  std::uint64_t next = 0;
  std::vector<std::uint64_t> held;
  bool contains(std::uint64_t position) const {
    return position >= next || std::find(held.begin(), held.end(), position) != held.end();
  }
};

Unacked unacked_of(Channel& ch, std::string_view group) {
  detail::ChannelState& s = ch.state();
  Unacked u;
  for (std::uint32_t i = 0; i < s.options.max_groups; ++i) {
    detail::GroupSlot& g = s.groups[i];
    if (g.state.load(std::memory_order_acquire) != detail::kActive || detail::slot_name(g.name) != group) continue;
    u.found = true;
    u.next = g.next.load(std::memory_order_acquire);  // first: what is held after this read is below it
    ring::lock_owner_word(g.give_back_lock, detail::self_token(), &detail::ChannelState::alive);
    for (const detail::GiveBackEntry& e : g.give_back)
      if (const std::uint64_t p = e.position_plus1.load(std::memory_order_relaxed)) u.held.push_back(p - 1);
    for (std::uint32_t c = 0; c < s.options.max_consumers; ++c) {
      detail::ConsumerSlot& slot = s.consumers[c];
      if (slot.state.load(std::memory_order_acquire) != detail::kActive || slot.group != i) continue;
      for (std::uint32_t k = 0; k < detail::kMaxInFlight; ++k)
        if (const std::uint64_t v = slot.in_flight[k].load(std::memory_order_seq_cst)) u.held.push_back(detail::held_position(v));
    }
    ring::unlock_owner_word(g.give_back_lock);
    break;
  }
  return u;
}

// Removes the browse groups of listings whose process is gone (killed before it removed its own).
void remove_stale_browse_groups(Channel& dlq) {
  for (const GroupStats& g : dlq.stats().groups) {
    if (g.name.rfind(kBrowsePrefix, 0) != 0) continue;
    const std::string pid_text = g.name.substr(std::string(kBrowsePrefix).size());
    if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
    const long pid = std::stol(pid_text);
    if (pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) dlq.remove_group(g.name);
  }
}

// A group of DLQ for this process's listing, removed when it goes out of scope.
class BrowseGroup {
 public:
  explicit BrowseGroup(Channel& dlq) : dlq_(dlq), name_(kBrowsePrefix + std::to_string(::getpid())) {
    dlq_.ensure_group(name_, Start::Earliest);
  }
  ~BrowseGroup() {
    try {
      dlq_.remove_group(name_);
    } catch (const std::exception&) {
    }
  }
  BrowseGroup(const BrowseGroup&) = delete;
  BrowseGroup& operator=(const BrowseGroup&) = delete;
  const std::string& name() const { return name_; }

 private:
  Channel& dlq_;
  std::string name_;
};

struct Letter {
  std::uint64_t position;
  InnerId id;
  std::uint64_t timestamp_ns;
  std::string key;
  std::string payload;
};

std::string letter_json(const Letter& l) {
  return JsonObject()
      .num("position", l.position)
      .num("producer", l.id.producer)
      .num("seq", l.id.seq)
      .num("timestamp_ns", l.timestamp_ns)
      .str("key", l.key)
      .str("payload", l.payload)
      .done();
}

int list(const DlqArgs& a, Channel& dlq) {
  remove_stale_browse_groups(dlq);
  std::vector<Letter> letters;
  {
    const Unacked unacked = unacked_of(dlq, kDeadLettersGroup);
    if (!unacked.found) {
      std::fprintf(stderr, "shmq dlq: channel '%s.dlq' has no group '%s' (removed?): cannot tell its dead letters\n",
                   a.channel.c_str(), kDeadLettersGroup);
      return kExitFailure;
    }
    BrowseGroup browse(dlq);
    ConsumerOptions o;
    o.start = Start::Earliest;
    o.wait = Wait::Block;
    Consumer reader(dlq, browse.name(), o);
    while (!a.count || letters.size() < *a.count) {
      if (stop_requested()) return kExitFailure;
      std::optional<Message> m = reader.poll();
      if (!m) break;  // caught up (Timeout); Closed if somebody removed the browse group
      if (unacked.contains(m->position()))
        letters.push_back({m->position(), m->id(), m->timestamp_ns(), std::string(m->key()), std::string(m->text())});
      reader.ack(*m);
    }
  }
  if (a.json) {
    for (const Letter& l : letters) std::printf("%s\n", letter_json(l).c_str());
    return kExitOk;
  }
  if (letters.empty()) {
    std::printf("no dead letters for '%s' (channel %s.dlq, group %s)\n", a.channel.c_str(), a.channel.c_str(),
                kDeadLettersGroup);
    return kExitOk;
  }
  Table t({"POSITION", "INNER ID", "TIME (UTC)", "KEY", "PAYLOAD"});
  for (const Letter& l : letters)
    t.add({std::to_string(l.position), std::to_string(l.id.producer) + ":" + std::to_string(l.id.seq),
           utc_time(l.timestamp_ns), printable(l.key, 40), printable(l.payload, 60)});
  t.print(stdout);
  std::printf("%zu dead letter%s of '%s'%s (shmq dlq %s --requeue publishes them again)\n", letters.size(),
              letters.size() == 1 ? "" : "s", a.channel.c_str(), a.count && letters.size() == *a.count ? " shown (--count)" : "",
              a.channel.c_str());
  return kExitOk;
}

int requeue(const DlqArgs& a, Channel& dlq) {
  Channel target = [&] {
    try {
      return Channel::attach(a.channel);
    } catch (const Error& e) {
      if (e.code() == std::errc::no_such_file_or_directory)
        throw Error(e.code(), "cannot requeue to channel '" + a.channel + "': it does not exist (no /dev/shm/shmq." +
                                  a.channel + "); recover or create it first");
      throw;
    }
  }();
  ConsumerOptions o;
  o.start = Start::Earliest;
  o.wait = Wait::Block;
  Consumer letters(dlq, kDeadLettersGroup, o);
  Producer producer(target, a.producer);
  std::vector<Message> batch;  // published, to ack in the dlq once durable
  std::uint64_t requeued = 0;

  auto settle = [&]() -> bool {
    if (batch.empty()) return true;
    if (!producer.flush(10s)) {
      std::fprintf(stderr, "shmq dlq: %zu requeued messages are not durable in '%s' after 10 s; they stay in %s.dlq too\n",
                   batch.size(), a.channel.c_str(), a.channel.c_str());
      return false;
    }
    for (const Message& m : batch)
      if (const Status st = letters.ack(m); st != Status::Ok) {
        std::fprintf(stderr, "shmq dlq: ack of dead letter at position %llu in %s.dlq failed: %s (it may come back)\n",
                     static_cast<unsigned long long>(m.position()), a.channel.c_str(), to_string(st));
        return false;
      }
    requeued += batch.size();
    batch.clear();
    return true;
  };

  while (!a.count || requeued + batch.size() < *a.count) {
    if (stop_requested()) break;
    std::optional<Message> m = letters.poll();
    if (!m) break;
    PublishOptions po;
    po.key = m->key();
    po.wait = Wait::Block;
    po.timeout = 10s;
    const Published p = producer.publish(m->payload(), po);
    if (p.status != Status::Ok && p.status != Status::Timeout) {  // Timeout: Sync, published, not durable yet
      std::fprintf(stderr, "shmq dlq: publish of dead letter %llu:%llu to '%s' failed: %s\n",
                   static_cast<unsigned long long>(m->id().producer), static_cast<unsigned long long>(m->id().seq),
                   a.channel.c_str(), to_string(p.status));
      settle();
      return kExitFailure;
    }
    if (a.json)
      std::printf("%s\n", JsonObject()
                              .raw("dead_letter", JsonObject().num("producer", m->id().producer).num("seq", m->id().seq).done())
                              .raw("requeued_as", JsonObject().num("producer", p.id.producer).num("seq", p.id.seq).done())
                              .num("position", p.position)
                              .str("key", m->key())
                              .done()
                              .c_str());
    else
      std::printf("requeued %llu:%llu as %llu:%llu  key=\"%s\" payload=\"%s\"\n",
                  static_cast<unsigned long long>(m->id().producer), static_cast<unsigned long long>(m->id().seq),
                  static_cast<unsigned long long>(p.id.producer), static_cast<unsigned long long>(p.id.seq),
                  printable(m->key(), 40).c_str(), printable(m->text(), 60).c_str());
    batch.push_back(*m);
    if (batch.size() == 32 && !settle()) return kExitFailure;
  }
  if (!settle()) return kExitFailure;
  wait_for_journaler(dlq, 2s);     // a durable dlq: its acks checkpointed
  wait_for_journaler(target, 2s);
  std::fflush(stdout);
  std::fprintf(stderr, "shmq dlq: requeued %llu dead letter%s to '%s' as producer '%s'%s\n",
               static_cast<unsigned long long>(requeued), requeued == 1 ? "" : "s", a.channel.c_str(), a.producer.c_str(),
               stop_requested() ? " (interrupted)" : "");
  return stop_requested() ? kExitFailure : kExitOk;
}

}  // namespace

int cmd_dlq(const DlqArgs& a) {
  const std::string dlq_name = a.channel + ".dlq";
  const bool channel_exists = Channel::exists(a.channel);  // throws for a bad name
  if (!Channel::exists(dlq_name)) {
    if (!channel_exists) {
      std::fprintf(stderr, "shmq dlq: channel '%s' does not exist (no /dev/shm/shmq.%s, no %s either)\n", a.channel.c_str(),
                   a.channel.c_str(), dlq_name.c_str());
      return kExitFailure;
    }
    if (!a.json) std::printf("no dead letters for '%s' (no channel %s: nothing was ever dead-lettered)\n", a.channel.c_str(), dlq_name.c_str());
    return kExitOk;
  }
  install_stop_handlers();
  Channel dlq = Channel::attach(dlq_name);
  return a.requeue ? requeue(a, dlq) : list(a, dlq);
}

}  // namespace shmq::tool
