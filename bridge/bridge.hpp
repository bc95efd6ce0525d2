// shmq_nats: a bridge between a shmq channel and a NATS JetStream stream.
//
// Contract.
//   run_out: consumes group GROUP of channel NAME and publishes each message to JetStream
//     (subject SUBJECT, stream STREAM) with the header Nats-Msg-Id = out_msg_id(...) and the key in
//     the header Shmq-Key (percent-encoded). A message is acked in shmq only after JetStream's
//     PubAck for it (a PubAck that says Duplicate counts as success). At most max_in_flight
//     publishes are outstanding; a slow or absent server stops the polling (back-pressure on the
//     group), it never drops a message: a publish that fails for a reason that may pass (timeout,
//     disconnection, no responders, a server error that is not about the message) is sent again,
//     with the same Nats-Msg-Id, after a backoff. A message JetStream refuses for good (larger than
//     the server's max_payload or the stream's max_msg_size) is copied to the channel NAME.dlq
//     (producer "bridge-out.GROUP", seq = its position + 1, key and payload kept) and acked.
//   run_in: pulls from the durable JetStream consumer CONSUMER of STREAM and publishes each
//     message into channel NAME through the producer "bridge-in.STREAM.CONSUMER" with seq = the
//     stream sequence, so that a redelivery is a shmq Duplicate. A JetStream message is acked only
//     when its shmq publish is durable per the channel's durability (Memory: in the ring; Async and
//     Sync: flush() says it is in the journal).
//   Both: a SIGKILL at any point loses nothing and duplicates nothing inside either system, as
//     long as the dedup windows cover the outage (bridge/README.md says how to size them).
//
// Threads: each run_* call owns its connection and runs on the calling thread (libnats adds its own
// threads; their callbacks only hand results to the calling thread). Setup failures (no server, a
// wrong URL, a stream or consumer that does not exist, a channel that cannot be opened) throw
// shmq::Error naming the server, the stream and the cause. run_* returns when `stop` becomes true,
// when idle_exit passed with nothing to do, or when max_messages were forwarded.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <shmq/shmq.hpp>
#include <string>

namespace shmq::bridge {

struct OutOptions {
  std::string channel;
  std::string group;
  std::string server;                        // nats://host:port, or a comma-separated list (a cluster)
  std::string stream;
  std::string subject;
  std::uint32_t max_in_flight = 256;         // outstanding publishes (and shmq messages held), 1..256
  std::chrono::milliseconds ack_wait{5000};  // a PubAck not back by then: the publish is sent again
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds idle_exit{0};    // return after this long with nothing polled and nothing in flight (0: never)
  std::uint64_t max_messages = 0;            // return after this many were acked in shmq (0: no limit)
  bool quiet = false;                        // no progress or retry lines on stderr
};

struct InOptions {
  std::string channel;
  std::string server;
  std::string stream;
  std::string consumer;                      // durable; created (AckExplicit) if it does not exist
  std::string filter_subject;                // for a consumer created now (empty: the whole stream)
  std::uint32_t batch = 256;                 // messages per fetch
  std::chrono::milliseconds ack_wait{30000}; // AckWait of a consumer created now
  std::uint32_t max_ack_pending = 1024;      // MaxAckPending of a consumer created now
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds idle_exit{0};
  std::uint64_t max_messages = 0;
  bool quiet = false;
};

// What a bridge reports (also kept in its status file, see status_path(), twice a second).
struct Summary {
  std::uint64_t forwarded = 0;               // messages acked on the source side after delivery
  std::uint64_t duplicates = 0;              // of those, how many the target already had
  std::uint64_t retries = 0;                 // publishes (or shmq publishes / flushes) done again
  std::uint64_t dead_lettered = 0;           // out: copied to NAME.dlq; in: terminated in JetStream
  std::uint64_t dedup_uncertain = 0;         // in: Duplicates older than the channel's dedup window
};

Summary run_out(const OutOptions&, const std::atomic<bool>& stop);
Summary run_in(const InOptions&, const std::atomic<bool>& stop);

// The Nats-Msg-Id of a message of channel CHANNEL: "CHANNEL.INCARNATION:PRODUCER:SEQ". The
// incarnation names the life of the channel's inner ids: for a durable channel, its journal
// directory (inode and birth time: stable across a rebuild from the journal, which keeps
// producers' sequences); for a Memory channel, its segment (the boot id, inode and birth time: a
// new segment restarts the sequences).
std::string incarnation_of(const Channel& ch);

// Where a running bridge writes its status (key=value lines: pid, role, lag, in_flight, retries,
// forwarded, duplicates, dead_lettered, last_error): /dev/shm/shmq-bridge.CHANNEL.out.GROUP or
// /dev/shm/shmq-bridge.CHANNEL.in.STREAM.CONSUMER.
std::string status_path(const std::string& channel, const std::string& role, const std::string& name);

// Key bytes <-> the Shmq-Key header value (percent-encoding of everything outside 0x21..0x7e and '%').
std::string encode_key(std::string_view key);
std::string decode_key(std::string_view text);

}  // namespace shmq::bridge
