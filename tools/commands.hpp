// The subcommands of the `shmq` tool. main.cpp parses the command line into these structs and
// calls one function; each returns the process's exit code. Setup failures come out of them as
// shmq::Error (main prints what() and exits 1).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace shmq::tool {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// SIGINT and SIGTERM set a flag instead of killing the process, so that a loop can end cleanly
// (its Consumer gives back what it holds). Blocking calls return early (no SA_RESTART).
void install_stop_handlers();
bool stop_requested() noexcept;

struct PubArgs {
  std::string channel;
  std::string producer = "shmq-cli";
  std::string key;
  std::optional<std::uint64_t> count;        // with size: N generated messages instead of stdin
  std::optional<std::uint64_t> size;
  bool create = false;
  std::optional<std::uint64_t> ring_bytes;   // with create
  std::optional<std::uint64_t> max_message_bytes;
  bool sync = false;
  std::uint64_t full_timeout_ms = 10'000;    // how long a full ring is waited on
};

struct SubArgs {
  std::string channel;
  std::string group;
  std::optional<std::uint64_t> count;
  bool no_ack = false;
  std::string from = "earliest";
  std::optional<std::uint64_t> timeout_ms;   // stop after this long without a message
  bool json = false;
};

struct DemoArgs {
  std::uint32_t messages_per_producer = 20'000;
};

int cmd_ls(bool json);
int cmd_stat(const std::string& channel, bool json);
int cmd_pub(const PubArgs&);
int cmd_sub(const SubArgs&);
int cmd_rm(const std::string& channel);
int cmd_demo(const DemoArgs&);

}  // namespace shmq::tool
