// The subcommands of the `shmq` tool. main.cpp parses the command line into these structs and
// calls one function; each returns the process's exit code. Setup failures come out of them as
// shmq::Error (main prints what() and exits 1).
//
// Where the files are: commands.cpp (ls, stat, pub, sub, rm and the helpers below),
// journal_commands.cpp (dump, verify, recover, journal), dlq.cpp, top.cpp, demo.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <shmq/shmq.hpp>
#include <string>

namespace shmq::tool {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// SIGINT and SIGTERM set a flag instead of killing the process, so that a loop can end cleanly
// (its Consumer gives back what it holds). Blocking calls return early (no SA_RESTART).
void install_stop_handlers();
bool stop_requested() noexcept;
// Sleeps up to D, in short slices, returning early when a stop was requested.
void sleep_unless_stopped(std::chrono::milliseconds d);

// What E says, without the generic text std::system_error appends for its code when that text
// says nothing about the case (corruption: "Invalid or incomplete multibyte or wide character").
std::string error_text(const std::exception& e);

// Before a process that acked messages closes a durable channel: waits (up to TIMEOUT) until some
// process is the channel's journaler, so that a checkpoint records the acks (the journaler writes
// one every 200 ms, and when it stops). A short-lived process can otherwise close the channel
// before its own journaler thread was elected, with no other journaler alive: its acks would then
// not survive the loss of the segment (the messages would be delivered again after a recovery).
void wait_for_journaler(const Channel& ch, std::chrono::milliseconds timeout);

// "Memory", "Async", "Sync".
const char* durability_name(Durability d);
// "memory", "async", "sync" (as on the command line) -> Durability. The parser checks the words.
Durability parse_durability(const std::string& word);
// A channel's statistics as a JSON object (stat --json).
std::string stats_json(const ChannelStats& s);

// The journal directory a command reads: TARGET is a channel name (its journal is
// <journal_dir or $SHMQ_DIR or ./shmq-data>/NAME, or, when that does not exist, the directory its
// live segment journals to) or a directory (a path with a '/', or an existing directory that is
// not a channel's journal). Returns the directory, or nullopt after printing why there is none
// ("shmq COMMAND: ..." on stderr).
std::optional<std::filesystem::path> find_journal(const char* command, const std::string& target,
                                                  const std::string& journal_dir);

struct PubArgs {
  std::string channel;
  std::string producer = "shmq-cli";
  std::string key;
  std::optional<std::uint64_t> count;        // with size: N generated messages instead of stdin
  std::optional<std::uint64_t> size;
  bool create = false;
  std::optional<std::uint64_t> ring_bytes;   // with create
  std::optional<std::uint64_t> max_message_bytes;
  std::string durability;                    // with create: "memory" (default), "async", "sync"
  std::string journal_dir;                   // with create and a durable channel
  bool no_prefault = false;                  // with create: ChannelOptions::prefault = false
  bool huge_pages = false;                   // with create: ChannelOptions::huge_pages
  bool sync = false;                         // PublishOptions::durability = Sync
  std::uint64_t full_timeout_ms = 10'000;    // how long a full ring (or a Sync publish) is waited on
  std::optional<std::uint64_t> seq;          // message i gets sequence seq + i (a retry is a Duplicate)
  bool exclusive = false;                    // ProducerOptions::exclusive
};

struct SubArgs {
  std::string channel;
  std::string group;
  std::optional<std::uint64_t> count;
  bool no_ack = false;
  std::string from = "earliest";
  std::optional<std::uint64_t> timeout_ms;   // stop after this long without a message
  bool json = false;
  bool exclusive = false;                    // ConsumerOptions::exclusive
};

struct RmArgs {
  std::string channel;
  bool journal = false;                      // remove its journal directory too
  std::string journal_dir;
};

struct DumpArgs {
  std::string target;                        // channel name or journal directory
  std::string journal_dir;
  std::optional<std::uint64_t> from;
  std::optional<std::uint64_t> count;
  bool json = false;
};

struct VerifyArgs {
  std::string target;
  std::string journal_dir;
  bool json = false;
};

struct RecoverArgs {
  std::string channel;
  std::string journal_dir;
  std::string durability = "async";         // at least: the journal's meta records the channel's, the stronger wins
  bool json = false;
};

struct JournalArgs {
  std::string channel;
};

struct DlqArgs {
  std::string channel;
  bool requeue = false;
  std::optional<std::uint64_t> count;
  bool json = false;
  std::string producer = "dlq-requeue";
};

struct TopArgs {
  std::string channel;                       // empty: every channel of the host
  bool once = false;
  std::uint64_t interval_ms = 1000;
  bool json = false;
};

struct DemoArgs {
  std::uint32_t messages_per_producer = 20'000;
};

int cmd_ls(bool json);
int cmd_stat(const std::string& channel, bool json);
int cmd_pub(const PubArgs&);
int cmd_sub(const SubArgs&);
int cmd_rm(const RmArgs&);
int cmd_dump(const DumpArgs&);
int cmd_verify(const VerifyArgs&);
int cmd_recover(const RecoverArgs&);
int cmd_journal(const JournalArgs&);
int cmd_dlq(const DlqArgs&);
int cmd_top(const TopArgs&);
int cmd_demo(const DemoArgs&);

}  // namespace shmq::tool
