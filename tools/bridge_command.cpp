// `shmq bridge out|in|stat` (see bridge_command.hpp). out and in run until Ctrl-C/SIGTERM (or
// --idle-exit-ms, --count); stat prints the status files of the running bridges (lag, in flight,
// retries, last error), for one channel or all.
#include "tools/bridge_command.hpp"

#include <nats/nats.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "bridge/bridge.hpp"
#include "tools/bridge_status.hpp"
#include "tools/commands.hpp"

namespace shmq::tool {
namespace {

bridge::OutOptions out_args;
bridge::InOptions in_args;
std::uint64_t out_ack_wait_ms = 5000, out_idle_ms = 0, in_ack_wait_ms = 30000, in_idle_ms = 0;
std::string stat_channel;
bool stat_json = false;
CLI::App* out_cmd = nullptr;
CLI::App* in_cmd = nullptr;
CLI::App* stat_cmd = nullptr;

// Set by SIGINT/SIGTERM; the bridge loop returns, giving back what it holds.
std::atomic<bool> stop_flag{false};
static_assert(std::atomic<bool>::is_always_lock_free);
void on_stop(int) { stop_flag.store(true, std::memory_order_relaxed); }

void install_handlers() {
  struct sigaction sa {};
  sa.sa_handler = &on_stop;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

void print_summary(const char* role, const bridge::Summary& s) {
  std::fprintf(stderr,
               "shmq bridge %s: forwarded %llu (%llu already there), retries %llu, dead-lettered %llu, "
               "dedup-uncertain %llu\n",
               role, static_cast<unsigned long long>(s.forwarded), static_cast<unsigned long long>(s.duplicates),
               static_cast<unsigned long long>(s.retries), static_cast<unsigned long long>(s.dead_lettered),
               static_cast<unsigned long long>(s.dedup_uncertain));
}

int cmd_stat() {
  const std::vector<BridgeRow> rows = bridge_rows(stat_channel);
  if (stat_json) {
    std::printf("%s\n", bridge_rows_json(rows).c_str());
    return kExitOk;
  }
  if (rows.empty()) {
    std::printf("no bridge%s\n", stat_channel.empty() ? "" : (" for channel " + stat_channel).c_str());
    return kExitOk;
  }
  print_bridge_rows(stdout, rows);
  return kExitOk;
}

}  // namespace

CLI::App* add_bridge_command(CLI::App& app) {
  CLI::App* b = app.add_subcommand("bridge", "Bridge a channel to NATS JetStream: out (group -> stream), in (durable consumer -> channel), stat.");
  b->require_subcommand(1);

  out_cmd = b->add_subcommand("out", "Consume group G of channel NAME and publish each message to JetStream (Nats-Msg-Id = its inner id); ack in shmq only after the PubAck.");
  out_cmd->add_option("NAME", out_args.channel, "Channel name")->required();
  out_cmd->add_option("--group", out_args.group, "Group to consume as (created if new)")->required();
  out_cmd->add_option("--server", out_args.server, "NATS URL (nats://HOST:PORT; a comma-separated list for a cluster)")->required();
  out_cmd->add_option("--stream", out_args.stream, "JetStream stream (must exist)")->required();
  out_cmd->add_option("--subject", out_args.subject, "Subject to publish to (one of the stream's)")->required();
  out_cmd->add_option("--max-in-flight", out_args.max_in_flight, "Publishes outstanding at once (1..256)")->check(CLI::Range(1u, 256u))->capture_default_str();
  out_cmd->add_option("--ack-wait-ms", out_ack_wait_ms, "A PubAck not back after this long: publish again (same Nats-Msg-Id)")->check(CLI::Range(10u, 600000u))->capture_default_str();
  out_cmd->add_option("--idle-exit-ms", out_idle_ms, "Exit after this long with nothing to forward (default: run until Ctrl-C/SIGTERM)");
  out_cmd->add_option("--count", out_args.max_messages, "Exit after forwarding N messages");
  out_cmd->add_flag("--quiet", out_args.quiet, "No retry or dead-letter lines on stderr");

  in_cmd = b->add_subcommand("in", "Pull from durable JetStream consumer C of stream S and publish into channel NAME (seq = stream sequence); ack in JetStream once durable in shmq.");
  in_cmd->add_option("NAME", in_args.channel, "Channel name (must exist)")->required();
  in_cmd->add_option("--server", in_args.server, "NATS URL (nats://HOST:PORT; a comma-separated list for a cluster)")->required();
  in_cmd->add_option("--stream", in_args.stream, "JetStream stream (must exist)")->required();
  in_cmd->add_option("--consumer", in_args.consumer, "Durable pull consumer (created, AckExplicit, if it does not exist)")->required();
  in_cmd->add_option("--filter-subject", in_args.filter_subject, "Filter subject of a consumer created now");
  in_cmd->add_option("--batch", in_args.batch, "Messages per fetch (1..4096)")->check(CLI::Range(1u, 4096u))->capture_default_str();
  in_cmd->add_option("--ack-wait-ms", in_ack_wait_ms, "AckWait of a consumer created now")->check(CLI::Range(100u, 3600000u))->capture_default_str();
  in_cmd->add_option("--max-ack-pending", in_args.max_ack_pending, "MaxAckPending of a consumer created now (keep it within the channel's dedup_window)")->check(CLI::Range(1u, 65536u))->capture_default_str();
  in_cmd->add_option("--idle-exit-ms", in_idle_ms, "Exit after this long with nothing fetched, once the consumer reports nothing pending and nothing unacked (a server that does not answer is not idle; default: run until Ctrl-C/SIGTERM)");
  in_cmd->add_option("--count", in_args.max_messages, "Exit after forwarding N messages");
  in_cmd->add_flag("--quiet", in_args.quiet, "No error lines on stderr (they stay in the status)");

  stat_cmd = b->add_subcommand("stat", "Show the running bridges of this host (or of one channel): lag, in flight, forwarded, retries, last error.");
  stat_cmd->add_option("NAME", stat_channel, "Only the bridges of this channel");
  stat_cmd->add_flag("--json", stat_json, "Print a JSON array");
  return b;
}

int cmd_bridge() {
  if (*stat_cmd) return cmd_stat();
  install_handlers();
  int rc = kExitOk;
  try {
    if (*out_cmd) {
      out_args.ack_wait = std::chrono::milliseconds(out_ack_wait_ms);
      out_args.idle_exit = std::chrono::milliseconds(out_idle_ms);
      print_summary("out", bridge::run_out(out_args, stop_flag));
    } else if (*in_cmd) {
      in_args.ack_wait = std::chrono::milliseconds(in_ack_wait_ms);
      in_args.idle_exit = std::chrono::milliseconds(in_idle_ms);
      print_summary("in", bridge::run_in(in_args, stop_flag));
    }
  } catch (...) {
    nats_Close();
    throw;  // main prints it: "shmq bridge: ..."
  }
  nats_Close();
  return rc;
}

}  // namespace shmq::tool
