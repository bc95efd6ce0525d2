// bridge in: a durable JetStream consumer -> a shmq channel (the contract is in bridge.hpp).
//
// One thread: fetch a batch, publish each message into the channel with seq = its stream sequence
// (producer "bridge-in.STREAM.CONSUMER"), make the batch durable (flush, on an Async or Sync
// channel), and only then ack the batch in JetStream. A crash anywhere leaves the unacked messages
// in JetStream, which delivers them again after AckWait; their publish is then a Duplicate (within
// the channel's dedup window), and they are acked.
#include <nats/nats.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "bridge/bridge.hpp"
#include "bridge/nats_link.hpp"

namespace shmq::bridge {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A fetched batch, destroyed on every path (deliver() may throw).
struct Batch {
  natsMsgList list{nullptr, 0};
  Batch() = default;
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  ~Batch() { natsMsgList_Destroy(&list); }
};

class InBridge {
 public:
  InBridge(const InOptions& o, const std::atomic<bool>& stop) : o_(o), stop_(stop) {
    if (o.batch == 0 || o.batch > 4096) detail::fail(std::errc::invalid_argument, "in", "--batch must be between 1 and 4096");
    if (o.consumer.empty()) detail::fail(std::errc::invalid_argument, "in", "no consumer given (--consumer)");
    ch_ = std::make_unique<Channel>(Channel::attach(o.channel));
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    link_ = std::make_unique<detail::NatsLink>("in", o.server, o.connect_timeout, &jo);
    link_->check_stream(o.stream);
    ensure_consumer();
    batch_ = std::min<std::uint32_t>(o.batch, std::max<std::uint32_t>(1, ch_->options().dedup_window / 4));
    // The producer first: it throws if another live bridge has the same (stream, consumer).
    producer_ = std::make_unique<Producer>(*ch_, "bridge-in." + o.stream + "." + o.consumer);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o.stream.c_str();
    so.Consumer = o.consumer.c_str();
    jsErrCode code = static_cast<jsErrCode>(0);
    const natsStatus s = js_PullSubscribe(&sub_, link_->js(), filter_.c_str(), o.consumer.c_str(), nullptr, &so, &code);
    if (s != NATS_OK)
      detail::fail(std::errc::io_error, "in",
                   "cannot pull from consumer '" + o.consumer + "' of stream '" + o.stream + "': " + detail::js_error_text(s, code));
    status_ = std::make_unique<detail::StatusFile>(status_path(o.channel, "in", o.stream + "." + o.consumer));
  }

  ~InBridge() {
    if (sub_ != nullptr) {
      natsSubscription_Unsubscribe(sub_);  // not Drain nor delete: the durable consumer stays
      natsSubscription_Destroy(sub_);
    }
  }

  Summary run() {
    Clock::time_point last_activity = Clock::now();
    Clock::time_point next_status{};
    Clock::time_point next_idle_check{};
    while (!stop_.load(std::memory_order_relaxed)) {
      const Clock::time_point now = Clock::now();
      if (now >= next_status) {
        write_status();
        next_status = now + 500ms;
      }
      if (o_.max_messages != 0 && settled() >= o_.max_messages) break;
      int want = static_cast<int>(batch_);
      if (o_.max_messages != 0) want = static_cast<int>(std::min<std::uint64_t>(want, o_.max_messages - settled()));
      Batch batch;
      natsMsgList& list = batch.list;
      jsErrCode code = static_cast<jsErrCode>(0);
      const natsStatus s = natsSubscription_Fetch(&list, sub_, want, 200, &code);
      if (s == NATS_TIMEOUT || (s == NATS_OK && list.Count == 0)) {
        // Nothing came, which is not yet "nothing to do": a cluster electing a leader, or a server
        // that stopped answering, does not answer a fetch either. Idle is what the consumer's
        // leader says: nothing pending, nothing waiting for an ack. Asked at most once a second.
        const Clock::time_point t = Clock::now();
        if (o_.idle_exit.count() > 0 && t - last_activity >= o_.idle_exit && t >= next_idle_check) {
          if (consumer_is_drained()) break;
          next_idle_check = Clock::now() + 1s;
        }
        continue;
      }
      if (s != NATS_OK) {
        note_error("fetch: " + detail::js_error_text(s, code));
        ++summary_.retries;
        std::this_thread::sleep_for(200ms);
        continue;
      }
      last_activity = Clock::now();
      deliver(list);
    }
    write_status();
    return summary_;
  }

 private:
  // Whether SEQ may be published now. The rule that makes every Duplicate exact: the producer's
  // highest seq stays below ack_floor + dedup_window, where ack_floor is the consumer's (every
  // stream sequence at or below it is acked, so never delivered again). Then whatever JetStream
  // delivers again (above the floor) is inside the channel's dedup window, and a Duplicate there
  // means the channel has it. The floor is read from the server only when SEQ is past the cached one.
  bool inside_window(std::uint64_t seq) {
    const std::uint64_t window = ch_->options().dedup_window;
    if (seq < ack_floor_ + window) return true;
    (void)ask_consumer();  // no answer: the cached floor stands
    return seq < ack_floor_ + window;
  }

  // Whether the consumer's leader answers that nothing is left: no message pending delivery and
  // none delivered and waiting for an ack (a redelivery to come). No answer is not "drained".
  bool consumer_is_drained() {
    std::string error;
    const std::optional<ConsumerCounts> c = ask_consumer(&error);
    if (!c) {
      note_error("idle check: consumer info: " + error);
      return false;
    }
    return c->pending == 0 && c->ack_pending == 0;
  }

  // The consumer's state as its leader reports it; the ack floor it reports raises ack_floor_.
  // No answer: nullopt, and why in ERROR when given.
  struct ConsumerCounts {
    std::uint64_t pending, ack_pending;
  };
  std::optional<ConsumerCounts> ask_consumer(std::string* error = nullptr) {
    jsConsumerInfo* ci = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    const natsStatus s = js_GetConsumerInfo(&ci, link_->js(), o_.stream.c_str(), o_.consumer.c_str(), nullptr, &code);
    if (s != NATS_OK || ci == nullptr) {
      if (error != nullptr) *error = detail::js_error_text(s, code);
      return std::nullopt;
    }
    ack_floor_ = std::max(ack_floor_, ci->AckFloor.Stream);
    const ConsumerCounts c{ci->NumPending, static_cast<std::uint64_t>(ci->NumAckPending)};
    jsConsumerInfo_Destroy(ci);
    return c;
  }

  // Messages done with: forwarded, or terminated in JetStream.
  std::uint64_t settled() const { return summary_.forwarded + summary_.dead_lettered; }

  void ensure_consumer() {
    jsConsumerInfo* ci = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = js_GetConsumerInfo(&ci, link_->js(), o_.stream.c_str(), o_.consumer.c_str(), nullptr, &code);
    if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) {
      jsConsumerConfig cc;
      jsConsumerConfig_Init(&cc);
      cc.Durable = o_.consumer.c_str();
      cc.AckPolicy = js_AckExplicit;
      cc.DeliverPolicy = js_DeliverAll;
      cc.AckWait = std::chrono::duration_cast<std::chrono::nanoseconds>(o_.ack_wait).count();
      cc.MaxAckPending = o_.max_ack_pending;
      cc.MaxDeliver = -1;
      if (!o_.filter_subject.empty()) cc.FilterSubject = o_.filter_subject.c_str();
      code = static_cast<jsErrCode>(0);
      s = js_AddConsumer(&ci, link_->js(), o_.stream.c_str(), &cc, nullptr, &code);
      if (s != NATS_OK)
        detail::fail(std::errc::io_error, "in",
                     "cannot create consumer '" + o_.consumer + "' on stream '" + o_.stream + "': " + detail::js_error_text(s, code));
      if (!o_.quiet)
        std::fprintf(stderr, "shmq bridge in: created durable consumer '%s' on stream '%s'\n", o_.consumer.c_str(),
                     o_.stream.c_str());
    } else if (s != NATS_OK) {
      detail::fail(std::errc::io_error, "in",
                   "cannot read consumer '" + o_.consumer + "' of stream '" + o_.stream + "': " + detail::js_error_text(s, code));
    }
    if (ci != nullptr) {
      if (ci->Config != nullptr) {
        if (ci->Config->AckPolicy != js_AckExplicit) {
          jsConsumerInfo_Destroy(ci);
          detail::fail(std::errc::invalid_argument, "in",
                       "consumer '" + o_.consumer + "' of stream '" + o_.stream +
                           "' must have AckPolicy explicit (it acks each message after the shmq publish is durable)");
        }
        if (ci->Config->FilterSubject != nullptr) filter_ = ci->Config->FilterSubject;
        if (ci->Config->DeliverSubject != nullptr && *ci->Config->DeliverSubject != '\0') {
          jsConsumerInfo_Destroy(ci);
          detail::fail(std::errc::invalid_argument, "in",
                       "consumer '" + o_.consumer + "' of stream '" + o_.stream + "' is a push consumer: bridge in needs a pull consumer");
        }
      }
      jsConsumerInfo_Destroy(ci);
    }
  }

  // Publishes the batch into the channel, makes it durable, then acks it in JetStream.
  void deliver(natsMsgList& list) {
    std::vector<natsMsg*> to_ack;
    to_ack.reserve(static_cast<std::size_t>(list.Count));
    for (int i = 0; i < list.Count && !stop_.load(std::memory_order_relaxed); ++i) {
      natsMsg* m = list.Msgs[i];
      jsMsgMetaData* meta = nullptr;
      if (natsMsg_GetMetaData(&meta, m) != NATS_OK || meta == nullptr) {
        note_error("a message without JetStream metadata (subject " + std::string(natsMsg_GetSubject(m)) + "): left unacked");
        continue;
      }
      const std::uint64_t seq = meta->Sequence.Stream;
      pending_ = meta->NumPending;
      jsMsgMetaData_Destroy(meta);
      if (!inside_window(seq)) {
        // Publishing it could push the producer's window past a message JetStream may still deliver
        // again (fetched by a bridge that died, not acked): its Duplicate would then be a guess.
        // Back to JetStream for now; the old ones come back after AckWait and move the floor.
        natsMsg_NakWithDelay(m, 200, nullptr);
        ++summary_.retries;
        note_error("stream sequence " + std::to_string(seq) + " is " + std::to_string(seq - ack_floor_) +
                   " past the consumer's ack floor, more than the channel's dedup window: waiting for the floor");
        continue;
      }
      const char* key_header = nullptr;
      std::string key;
      if (natsMsgHeader_Get(m, "Shmq-Key", &key_header) == NATS_OK && key_header != nullptr) key = decode_key(key_header);
      PublishOptions po;
      po.key = key;
      po.seq = seq;
      po.timeout = 200ms;
      po.wait = Wait::Yield;
      const auto* data = reinterpret_cast<const std::byte*>(natsMsg_GetData(m));
      const std::span<const std::byte> payload(data, static_cast<std::size_t>(natsMsg_GetDataLength(m)));
      // Durability::Memory for each publish: the batch is made durable by one flush below (group
      // commit), not one fdatasync a message.
      po.durability = Durability::Memory;
      for (;;) {
        const Published p = producer_->publish(payload, po);
        if (p.status == Status::Ok) break;
        if (p.status == Status::Duplicate) {
          ++summary_.duplicates;
          if (p.position == kNoPosition) {
            // Older than the window: shmq cannot say whether it was ever accepted. The floor rule
            // (inside_window) makes that impossible for a redelivery, so the stream or the consumer
            // was made again under the same names (sequences from 1 again). Acking could lose
            // messages, publishing could duplicate them: stop, ack nothing of this batch, and say so.
            ++summary_.dedup_uncertain;
            detail::fail(std::errc::invalid_argument, "in",
                         "stream sequence " + std::to_string(seq) + " of stream '" + o_.stream + "' (consumer '" +
                             o_.consumer + "') is below what producer '" + std::string(producer_->name()) +
                             "' already published into channel '" + o_.channel +
                             "', by more than its dedup window: was the stream or the consumer made again? Give the "
                             "new one another consumer name (a new producer), or remove the channel's copy first. "
                             "Nothing of this batch was acked");
          }
          break;
        }
        if (p.status == Status::TooLarge || p.status == Status::InvalidSeq) {
          // Can never enter this channel: terminated in JetStream (it stays in the stream) and reported.
          note_error("stream sequence " + std::to_string(seq) + " (" + std::to_string(payload.size()) +
                     " bytes): " + to_string(p.status) + " in channel " + o_.channel + ": terminated in JetStream");
          natsMsg_Term(m, nullptr);
          ++summary_.dead_lettered;
          goto next_message;
        }
        // WouldBlock (ring full: back-pressure), Timeout: wait and again, unless stopping.
        ++summary_.retries;
        if (stop_.load(std::memory_order_relaxed)) return;  // unacked: JetStream delivers it again
      }
      to_ack.push_back(m);
    next_message:;
    }
    if (ch_->options().durability != Durability::Memory) {
      while (!producer_->flush(std::chrono::seconds(1))) {
        ++summary_.retries;
        note_error("flush: the journal did not make the batch durable within 1 s (waiting)");
        if (stop_.load(std::memory_order_relaxed)) return;  // unacked: delivered again
      }
    }
    for (natsMsg* m : to_ack) {
      // Fire and forget: an ack lost on the way only makes JetStream deliver it again (a Duplicate).
      if (natsMsg_Ack(m, nullptr) == NATS_OK) ++summary_.forwarded;
    }
  }

  void note_error(const std::string& what) {
    if (what != last_error_ && !o_.quiet) std::fprintf(stderr, "shmq bridge in: %s\n", what.c_str());
    last_error_ = what;
  }

  void write_status() {
    status_->write({{"pid", std::to_string(::getpid())},
                    {"role", "in"},
                    {"channel", o_.channel},
                    {"stream", o_.stream},
                    {"consumer", o_.consumer},
                    {"server", o_.server},
                    {"connected", link_->connected() ? "yes" : "no"},
                    {"lag", std::to_string(pending_)},
                    {"in_flight", "0"},
                    {"forwarded", std::to_string(summary_.forwarded)},
                    {"duplicates", std::to_string(summary_.duplicates)},
                    {"retries", std::to_string(summary_.retries)},
                    {"dead_lettered", std::to_string(summary_.dead_lettered)},
                    {"dedup_uncertain", std::to_string(summary_.dedup_uncertain)},
                    {"last_error", last_error_}});
  }

  const InOptions& o_;
  const std::atomic<bool>& stop_;
  std::unique_ptr<Channel> ch_;
  std::unique_ptr<detail::NatsLink> link_;
  std::string filter_;
  natsSubscription* sub_ = nullptr;
  std::unique_ptr<Producer> producer_;
  std::unique_ptr<detail::StatusFile> status_;
  std::uint64_t pending_ = 0;
  std::uint64_t ack_floor_ = 0;  // the consumer's ack floor (stream sequence), as last read
  std::uint32_t batch_ = 0;      // fetch size: o.batch, at most a quarter of the dedup window
  Summary summary_;
  std::string last_error_;
};

}  // namespace

Summary run_in(const InOptions& o, const std::atomic<bool>& stop) {
  InBridge b(o, stop);
  return b.run();
}

}  // namespace shmq::bridge
