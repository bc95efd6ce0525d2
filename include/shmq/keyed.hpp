// KeyedConsumer: effectively-once handling on top of at-least-once delivery.
//
// Contract. A KeyedConsumer is a Consumer of GROUP plus a persistent, bounded store of the keys it
// has processed (a small file of CRC-framed records, journal/key_store.hpp). A message's key is
// its biz id (PublishOptions::key) or, when it has none, its inner id together with the channel's
// incarnation (a channel made again, whose ids start over, does not inherit the old one's keys;
// a recovery from the journal keeps the incarnation). poll() returns only messages
// whose key is not in the store; a message whose key is there (a redelivery after a crash, a
// retry that the producer side could not recognise) is acked on the way and counted in skipped().
// The consumers of one group may share one store, across processes: a message that a dead
// consumer had processed but not acked is skipped by the one it is redelivered to.
//
// The order, and what a crash between two steps costs:
//
//   1. the handler runs (its side effect happens)
//   2. done(): the key is appended to the store (and fdatasync'd, with sync = Sync)
//   3. done(): the message is acked
//
//   crash before 1 ends:        redelivered, handled again (nothing was done, or the handler's
//                               side effect was partial: make it atomic or idempotent)
//   crash between 1 and 2:      redelivered, handled again: the one extra handler call
//   crash between 2 and 3:      redelivered, key found: acked without calling the handler
//   after 3:                    gone from the group
//
// So a message is never lost, and its handler runs at most once more than once per crash that
// falls between its side effect and its key. A side effect that must happen exactly once goes in
// the same transaction as the key (keep your own store, and use Consumer), or is idempotent.
// With sync = Async or Memory, a host crash can also forget keys added shortly before it: those
// messages, if not acked yet, are handled again.
//
// Threads: one thread at a time per KeyedConsumer, like a Consumer.
#pragma once

#include <functional>

#include "shmq/shmq.hpp"

namespace shmq {

struct KeyedConsumerOptions {
  ConsumerOptions consumer;
  // The store of processed keys. Empty: "keys.GROUP" in the channel's journal directory (DIR/NAME,
  // as ChannelOptions::journal_dir, $SHMQ_DIR or ./shmq-data say), created if missing.
  std::filesystem::path store;
  std::size_t max_keys = 1 << 20;      // the newest max_keys are remembered; older ones are forgotten
  Durability sync = Durability::Sync;  // Sync: fdatasync each key before its ack; Async: within
                                       // flush_interval; Memory: left to the page cache
  std::chrono::milliseconds flush_interval{5};
};

// What KeyedConsumer::process() did.
enum class Handled {
  Nothing,    // no message within the timeout (consumer().status() says why)
  Processed,  // the handler returned true: key recorded, message acked
  Nacked,     // the handler returned false: the message was nacked (delivered again later)
};

namespace detail {
struct KeyedState;
// Crash tests: a hook called inside process() after the handler returned true, and inside done()
// after the key is recorded, before the ack.
enum class KeyedStage { HandlerDone, KeyRecorded };
void set_keyed_hook(void (*hook)(KeyedStage));
}  // namespace detail

class KeyedConsumer {
 public:
  // Joins GROUP and opens (or creates) the store. Throws Error like Consumer, and for a store that
  // cannot be opened or is corrupt (naming its path and the offset).
  KeyedConsumer(Channel&, std::string_view group, const KeyedConsumerOptions& = {});
  KeyedConsumer(KeyedConsumer&&) noexcept;
  KeyedConsumer& operator=(KeyedConsumer&&) noexcept;
  ~KeyedConsumer();

  // The next message whose key is not processed; already-processed ones are acked on the way.
  // Waits up to TIMEOUT in all. Throws Error if the store cannot be read (the message polled is
  // nacked first).
  std::optional<Message> poll(std::chrono::nanoseconds timeout = {});
  // The message is handled: records its key, then acks it. Throws Error if the key cannot be
  // recorded (the message is then nacked: it is delivered again).
  Status done(const Message&);
  Status nack(const Message&, std::chrono::nanoseconds delay = {});
  // poll(), then HANDLER: true means done(), false means nack(). A handler that throws has its
  // message nacked, and the exception goes on.
  Handled process(const std::function<bool(const Message&)>& handler, std::chrono::nanoseconds timeout = {});

  bool processed(const Message&);      // its key is in the store
  std::uint64_t skipped() const noexcept;  // messages acked without reaching the caller
  Consumer& consumer() noexcept;
  const std::filesystem::path& store_path() const noexcept;

 private:
  std::unique_ptr<detail::KeyedState> state_;
};

}  // namespace shmq
