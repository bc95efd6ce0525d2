// bridge out: a shmq group -> JetStream (the contract is in bridge.hpp).
//
// One thread polls the group and publishes asynchronously; libnats calls on_pub_ack (its own
// thread) for every PubAck, error or timeout, which only queues the result under `mu` and wakes the
// polling thread. The polling thread owns the Consumer, the window of held messages and every
// decision: ack in shmq (PubAck, or PubAck Duplicate), send again after a backoff (anything that may
// pass), or dead-letter (refused for good). So a message leaves the group only after JetStream has
// it, and the window (at most max_in_flight held messages) is the back-pressure.
#include <nats/nats.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "bridge/bridge.hpp"
#include "bridge/nats_link.hpp"

namespace shmq::bridge {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// What came back for one publish.
struct Outcome {
  std::string msg_id;
  bool stored = false;        // PubAck
  bool duplicate = false;     // PubAck that says the stream had it already
  natsStatus status = NATS_OK;
  jsErrCode code = static_cast<jsErrCode>(0);
  std::string text;
};

// Filled by libnats' thread, drained by the polling thread.
struct Mailbox {
  std::mutex mu;
  std::condition_variable ready;
  std::vector<Outcome> outcomes;
  bool waiting = false;      // the polling thread sleeps on `ready`: only then is it woken
  std::size_t wake_at = 1;   // ... and only once this many outcomes wait (a quarter of what is in flight:
                             // one wake-up per PubAck costs a context switch each on a busy machine)
};

void on_pub_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  auto* box = static_cast<Mailbox*>(closure);
  Outcome o;
  const char* id = nullptr;
  if (msg != nullptr && natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr) o.msg_id = id;
  if (pa != nullptr) {
    o.stored = true;
    o.duplicate = pa->Duplicate;
  } else if (pae != nullptr) {
    o.status = pae->Err;
    o.code = pae->ErrCode;
    o.text = pae->ErrText != nullptr ? pae->ErrText : natsStatus_GetText(pae->Err);
  }
  natsMsg_Destroy(msg);
  if (o.msg_id.empty()) return;  // not ours (cannot happen: every message carries its id)
  bool wake = false;
  {
    std::lock_guard lock(box->mu);
    box->outcomes.push_back(std::move(o));
    wake = box->waiting && box->outcomes.size() >= box->wake_at;
  }
  if (wake) box->ready.notify_one();
}

// Refused for good: sending it again cannot succeed.
bool refused_for_good(natsStatus s, jsErrCode code) {
  return s == NATS_MAX_PAYLOAD || code == JSStreamMessageExceedsMaximumErr;
}

struct Held {
  Message message;
  std::string msg_id;
  enum class State { New, InFlight, Waiting, Done };
  State state = State::New;     // InFlight: published, outcome not back; Waiting: to send again at send_at
  Clock::time_point send_at{};
  std::chrono::milliseconds backoff{0};
};

class OutBridge {
 public:
  OutBridge(const OutOptions& o, const std::atomic<bool>& stop) : o_(o), stop_(stop) {
    if (o.max_in_flight == 0 || o.max_in_flight > 256)
      detail::fail(std::errc::invalid_argument, "out", "--max-in-flight must be between 1 and 256");
    if (o.subject.empty()) detail::fail(std::errc::invalid_argument, "out", "no subject given (--subject)");
    ch_ = std::make_unique<Channel>(Channel::attach(o.channel));
    incarnation_ = incarnation_of(*ch_);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    jo.PublishAsync.MaxPending = o.max_in_flight;
    jo.PublishAsync.AckHandler = &on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = &box_;
    link_ = std::make_unique<detail::NatsLink>("out", o.server, o.connect_timeout, &jo);
    link_->check_stream(o.stream, o.subject);
    max_payload_ = natsConnection_GetMaxPayload(link_->connection());
    ConsumerOptions co;
    co.start = Start::Earliest;
    co.wait = Wait::Block;
    co.max_in_flight = o.max_in_flight;
    consumer_ = std::make_unique<Consumer>(*ch_, o.group, co);
    status_ = std::make_unique<detail::StatusFile>(status_path(o.channel, "out", o.group));
  }

  ~OutBridge() {
    // Publishes still out: their PubAcks must not reach box_ after it is gone. Closing the
    // connection (in ~NatsLink) drops them; the held messages go back to the group with the Consumer.
    link_.reset();
    consumer_.reset();
  }

  Summary run() {
    Clock::time_point last_activity = Clock::now();
    Clock::time_point next_status{};
    while (!stop_.load(std::memory_order_relaxed)) {
      bool progressed = fill();
      progressed |= send_due();
      progressed |= settle(held_.empty() ? 0ms : 2ms);
      const Clock::time_point now = Clock::now();
      if (progressed || !held_.empty()) last_activity = now;
      if (now >= next_status) {
        write_status();
        next_status = now + 500ms;
      }
      if (o_.max_messages != 0 && settled() >= o_.max_messages && held_.empty()) break;
      if (o_.idle_exit.count() > 0 && held_.empty() && now - last_activity >= o_.idle_exit) break;
    }
    write_status();
    return summary_;
  }

 private:
  // Polls new messages into the window while it has room and nothing waits for a retry (a retry
  // pending means the server is in trouble: do not pile more on it).
  bool fill() {
    bool any = false;
    while (retry_pending_ == 0 && held_.size() < o_.max_in_flight && !stop_.load(std::memory_order_relaxed)) {
      if (o_.max_messages != 0 && settled() + held_.size() >= o_.max_messages) break;
      std::optional<Message> m = consumer_->poll(held_.empty() ? std::chrono::nanoseconds(100ms) : std::chrono::nanoseconds(0));
      if (!m) break;
      any = true;
      Held h{*m, msg_id(*m), Held::State::New, Clock::now(), 0ms};
      const std::uint64_t pos = m->position();
      by_id_[h.msg_id] = pos;
      held_.emplace(pos, std::move(h));
      publish(held_.at(pos));
    }
    return any;
  }

  // Messages that left the group: forwarded, or dead-lettered.
  std::uint64_t settled() const { return summary_.forwarded + summary_.dead_lettered; }

  std::string msg_id(const Message& m) const {
    return o_.channel + "." + incarnation_ + ":" + std::to_string(m.id().producer) + ":" + std::to_string(m.id().seq);
  }

  // Sends H (again). Errors that come back at once are handled like an outcome.
  void publish(Held& h) {
    const std::span<const std::byte> payload = h.message.payload();
    if (max_payload_ > 0 && static_cast<std::int64_t>(payload.size()) > max_payload_) {
      dead_letter(h, "payload of " + std::to_string(payload.size()) + " bytes is over the server's max_payload of " +
                         std::to_string(max_payload_));
      return;
    }
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, o_.subject.c_str(), nullptr, reinterpret_cast<const char*>(payload.data()),
                                  static_cast<int>(payload.size()));
    if (s == NATS_OK && !h.message.key().empty()) s = natsMsgHeader_Set(msg, "Shmq-Key", encode_key(h.message.key()).c_str());
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = h.msg_id.c_str();
    po.MaxWait = o_.ack_wait.count();
    po.ExpectStream = o_.stream.c_str();
    if (s == NATS_OK) s = js_PublishMsgAsync(link_->js(), &msg, &po);
    natsMsg_Destroy(msg);  // no-op when the library took it
    if (s == NATS_OK) {
      set_state(h, Held::State::InFlight);
      return;
    }
    if (refused_for_good(s, static_cast<jsErrCode>(0))) {
      dead_letter(h, detail::status_text(s));
      return;
    }
    retry_later(h, "publish: " + detail::status_text(s));
  }

  // Keeps retry_pending_ (how many are Waiting) in step.
  void set_state(Held& h, Held::State st) {
    if (h.state == Held::State::Waiting) --retry_pending_;
    if (st == Held::State::Waiting) ++retry_pending_;
    h.state = st;
  }

  void retry_later(Held& h, const std::string& why) {
    set_state(h, Held::State::Waiting);
    h.backoff = std::min<std::chrono::milliseconds>(h.backoff.count() == 0 ? 50ms : h.backoff * 2, 2000ms);
    h.send_at = Clock::now() + h.backoff;
    ++summary_.retries;
    if (why != last_error_ && !o_.quiet) std::fprintf(stderr, "shmq bridge out: %s (will retry)\n", why.c_str());
    last_error_ = why;
  }

  bool send_due() {
    if (retry_pending_ == 0) return false;
    bool any = false;
    const Clock::time_point now = Clock::now();
    for (auto& [pos, h] : held_) {  // in position order: the oldest first
      if (h.state != Held::State::Waiting || h.send_at > now) continue;
      any = true;
      publish(h);
      if (h.state == Held::State::Waiting) break;  // refused again (buffer full...): later
    }
    erase_done();
    return any;
  }

  // Applies the outcomes that came back, waiting up to WAIT for one.
  bool settle(std::chrono::milliseconds wait) {
    std::vector<Outcome> got;
    {
      std::unique_lock lock(box_.mu);
      if (box_.outcomes.empty() && wait.count() > 0) {
        box_.waiting = true;
        box_.wake_at = std::max<std::size_t>(1, (held_.size() - retry_pending_) / 4);
        box_.ready.wait_for(lock, wait);  // the timeout collects a remainder below wake_at
        box_.waiting = false;
      }
      got.swap(box_.outcomes);
    }
    for (Outcome& o : got) {
      const auto it = by_id_.find(o.msg_id);
      if (it == by_id_.end()) continue;  // a late answer for a message settled already
      Held& h = held_.at(it->second);
      if (h.state != Held::State::InFlight) continue;  // a late answer (timed out, waiting again): the resend decides
      if (o.stored) {
        ack(h, o.duplicate);
      } else if (refused_for_good(o.status, o.code)) {
        dead_letter(h, "JetStream refused it: " + o.text);
      } else {
        retry_later(h, "PubAck for " + o.msg_id + ": " + o.text +
                           (o.code != 0 ? " (JetStream error " + std::to_string(static_cast<int>(o.code)) + ")" : ""));
      }
    }
    erase_done();
    return !got.empty();
  }

  void ack(Held& h, bool duplicate) {
    const Status st = consumer_->ack(h.message);
    if (st == Status::Ok) {
      ++summary_.forwarded;
      if (duplicate) ++summary_.duplicates;
    }
    // NotHeld: the group gave it to someone else (it cannot with visibility_timeout 0, unless the
    // group was removed); it is in the stream and its next delivery will be a PubAck Duplicate.
    set_state(h, Held::State::Done);
    done_.push_back(h.message.position());
  }

  // Refused for good: into NAME.dlq (stable producer, seq = position + 1: a retry after a crash is a
  // Duplicate there), then acked here. If NAME.dlq has no room, the message stays held and is tried
  // again later: it is never acked without being somewhere.
  void dead_letter(Held& h, const std::string& reason) {
    if (!dlq_) {
      ChannelOptions dopt;
      dopt.durability = Durability::Memory;
      dopt.max_message_bytes = ch_->options().max_message_bytes;
      dopt.ring_bytes = std::max<std::size_t>(std::size_t(1) << 20, std::bit_ceil(4 * dopt.max_message_bytes));
      // Made as the core makes it (a Memory channel) unless it exists: then attached as it is.
      const std::string dlq_name = o_.channel + ".dlq";
      dlq_ = std::make_unique<Channel>(Channel::exists(dlq_name) ? Channel::attach(dlq_name) : Channel::open(dlq_name, dopt));
      dlq_->ensure_group("dead-letters", Start::Earliest);
      dlq_producer_ = std::make_unique<Producer>(*dlq_, "bridge-out." + o_.group);
    }
    PublishOptions po;
    po.key = h.message.key();
    po.seq = h.message.position() + 1;
    po.timeout = 10ms;
    const Published p = dlq_producer_->publish(h.message.payload(), po);
    if (p.status != Status::Ok && p.status != Status::Duplicate) {
      retry_later(h, "dead letter to " + o_.channel + ".dlq: " + to_string(p.status) + " (reason: " + reason + ")");
      return;
    }
    const std::string line = "message " + std::to_string(h.message.id().producer) + ":" +
                             std::to_string(h.message.id().seq) + " dead-lettered to " + o_.channel + ".dlq: " + reason;
    if (!o_.quiet) std::fprintf(stderr, "shmq bridge out: %s\n", line.c_str());
    last_error_ = line;
    if (consumer_->ack(h.message) == Status::Ok) ++summary_.dead_lettered;
    set_state(h, Held::State::Done);
    done_.push_back(h.message.position());
  }

  void erase_done() {
    for (std::uint64_t pos : done_) {
      const auto it = held_.find(pos);
      if (it == held_.end()) continue;
      by_id_.erase(it->second.msg_id);
      held_.erase(it);
    }
    done_.clear();
  }

  void write_status() {
    std::uint64_t lag = 0;
    try {
      for (const GroupStats& g : ch_->stats().groups)
        if (g.name == o_.group) lag = g.lag_messages;
    } catch (const std::exception&) {
    }
    std::size_t in_flight = 0;
    for (const auto& [pos, h] : held_) in_flight += h.state == Held::State::InFlight ? 1 : 0;
    status_->write({{"pid", std::to_string(::getpid())},
                    {"role", "out"},
                    {"channel", o_.channel},
                    {"group", o_.group},
                    {"stream", o_.stream},
                    {"subject", o_.subject},
                    {"server", o_.server},
                    {"connected", link_->connected() ? "yes" : "no"},
                    {"lag", std::to_string(lag)},
                    {"held", std::to_string(held_.size())},
                    {"in_flight", std::to_string(in_flight)},
                    {"forwarded", std::to_string(summary_.forwarded)},
                    {"duplicates", std::to_string(summary_.duplicates)},
                    {"retries", std::to_string(summary_.retries)},
                    {"dead_lettered", std::to_string(summary_.dead_lettered)},
                    {"last_error", last_error_}});
  }

  const OutOptions& o_;
  const std::atomic<bool>& stop_;
  Mailbox box_;  // before link_: libnats' thread uses it until the connection is closed
  std::unique_ptr<Channel> ch_;
  std::string incarnation_;
  std::unique_ptr<detail::NatsLink> link_;
  std::int64_t max_payload_ = 0;
  std::unique_ptr<Consumer> consumer_;
  std::unique_ptr<Channel> dlq_;
  std::unique_ptr<Producer> dlq_producer_;
  std::unique_ptr<detail::StatusFile> status_;
  std::map<std::uint64_t, Held> held_;                      // by position
  std::unordered_map<std::string, std::uint64_t> by_id_;    // Nats-Msg-Id -> position
  std::vector<std::uint64_t> done_;                          // settled this round: erased by erase_done()
  std::size_t retry_pending_ = 0;                            // entries Waiting
  Summary summary_;
  std::string last_error_;
};

}  // namespace

Summary run_out(const OutOptions& o, const std::atomic<bool>& stop) {
  OutBridge b(o, stop);
  return b.run();
}

}  // namespace shmq::bridge
