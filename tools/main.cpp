// shmq: the command-line tool. Parses the command line (CLI11) and runs one subcommand.
// Exit codes: 0 ok, 1 failure (printed as one line on stderr), 2 usage error.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <shmq/shmq.hpp>

#include "tools/commands.hpp"
#ifdef SHMQ_HAVE_NATS
#include "tools/bridge_command.hpp"
#endif

namespace {

using shmq::tool::kExitFailure;
using shmq::tool::kExitOk;
using shmq::tool::kExitUsage;

// An option whose absence matters (std::optional in the argument structs): CLI11 parses it into
// `value`; set() copies it to `out` when the option was given.
struct MaybeOption {
  std::optional<std::uint64_t>& out;
  std::uint64_t value = 0;
  CLI::Option* option = nullptr;

  CLI::Option* add(CLI::App* app, const std::string& name, const std::string& help) {
    return option = app->add_option(name, value, help);
  }
  void set() const {
    if (option->count() > 0) out = value;
  }
};

// A whole number of at least MIN, written in digits ("-3" would otherwise wrap to a huge unsigned).
CLI::Validator at_least(std::uint64_t min) {
  return CLI::Validator(
      [min](std::string& text) -> std::string {
        if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos)
          return "'" + text + "' is not a whole number";
        if (text.size() > 19 || std::stoull(text) < min) return "'" + text + "' must be between " + std::to_string(min) + " and 10^19";
        return {};
      },
      ">=" + std::to_string(min));
}

// CLI11 reports an unknown command as "A subcommand is required": name it instead.
bool unknown_command(const CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return false;
  for (const CLI::App* sub : app.get_subcommands({}))
    if (sub->check_name(argv[1])) return false;
  std::fprintf(stderr, "shmq: unknown command '%s' (commands: ls, stat, pub, sub, rm, dump, verify, recover, journal, dlq, top, demo; see shmq --help)\n", argv[1]);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmq: a message queue for the processes of one Linux host (lock-free ring in shared memory).", "shmq"};
  app.require_subcommand(1);
  app.footer("Exit codes: 0 ok, 1 failure, 2 usage error. `shmq COMMAND --help` describes a command.");

  // ls
  bool ls_json = false;
  CLI::App* ls = app.add_subcommand("ls", "List the channels on this host: ring use, producers, groups, consumers, lag.");
  ls->add_flag("--json", ls_json, "Print a JSON array instead of a table");

  // stat
  std::string stat_channel;
  bool stat_json = false;
  CLI::App* stat = app.add_subcommand("stat", "Show the statistics of one channel: positions, producers, groups (lag, in flight).");
  stat->add_option("NAME", stat_channel, "Channel name")->required();
  stat->add_flag("--json", stat_json, "Print a JSON object instead of text");

  // pub
  shmq::tool::PubArgs pub_args;
  MaybeOption pub_count{pub_args.count}, pub_size{pub_args.size}, pub_ring{pub_args.ring_bytes},
      pub_max{pub_args.max_message_bytes};
  CLI::App* pub = app.add_subcommand(
      "pub",
      "Publish the lines of stdin, one message per line (or, with --count and --size, N generated messages of B "
      "bytes). Prints a summary (count, msgs/s) to stderr. On a durable channel it exits once what it published is "
      "in the journal.");
  pub->add_option("NAME", pub_args.channel, "Channel name")->required();
  pub->add_option("--producer", pub_args.producer, "Producer name (one live process per name)")->capture_default_str();
  pub->add_option("--key", pub_args.key, "Key (biz id) carried by every message");
  pub->add_flag("--exclusive", pub_args.exclusive,
                "Be the channel's only producer (plain-store claims); refused beside a live producer");
  pub->add_option("--seq", pub_args.seq,
                  "Publish message i (from 0) with sequence SEQ+i; run again, the ones already accepted are dropped "
                  "as duplicates (within the channel's dedup window)")
      ->check(at_least(1));
  pub_count.add(pub, "--count", "Publish N generated messages instead of stdin")->check(at_least(1));
  pub_size.add(pub, "--size", "Payload bytes of each generated message")->check(at_least(0));
  pub_count.option->needs(pub_size.option);
  pub_size.option->needs(pub_count.option);
  CLI::Option* create = pub->add_flag(
      "--create", pub_args.create,
      "Create the channel if it does not exist (rebuilt from its journal if it has one). An existing channel is "
      "attached, with its own durability");
  pub_ring.add(pub, "--ring-bytes", "Ring size of a channel created now (power of two, 64 KiB .. 1 GiB; default 64 MiB)")
      ->check(at_least(1))
      ->needs(create);
  pub_max.add(pub, "--max-message-bytes", "Largest payload of a channel created now (at most a quarter of the ring)")
      ->check(at_least(1))
      ->needs(create);

      pub->add_option("--durability", pub_args.durability,
                      "Durability of a channel created now: memory (the segment only), async (the default, as in the "
                      "library: journal, group commit every few ms), sync (every publish waits for the journal)")
          ->check(CLI::IsMember({"memory", "async", "sync"}))
          ->needs(create);
  pub->add_flag("--no-prefault", pub_args.no_prefault,
                "A channel created now is not pre-faulted: its pages are allocated when first written (the first lap "
                "of the ring then takes a page fault every 4 KiB, and a full /dev/shm is a SIGBUS instead of an error)")
      ->needs(create);
  pub->add_flag("--huge-pages", pub_args.huge_pages,
                "A channel created now lives on huge pages: shmq.NAME in a hugetlbfs mount (/dev/hugepages), linked "
                "from /dev/shm/shmq.NAME; needs free huge pages (vm.nr_hugepages) and a ring that is a multiple of "
                "the huge page size")
      ->needs(create);
  pub->add_option("--journal-dir", pub_args.journal_dir,
                      "Where a durable channel created now keeps its journal: DIR/NAME (default $SHMQ_DIR, else ./shmq-data)")
          ->needs(create);
  pub->add_option("--timeout-ms", pub_args.full_timeout_ms,
                  "How long a full ring, or the journal (--sync, and the end of a durable publish), is waited on")
      ->check(at_least(0))
      ->capture_default_str();
  pub->add_flag("--sync", pub_args.sync,
                "Publish with Durability::Sync: each message is in the journal (fdatasync'd) before the next "
                "(an Async or Sync channel)");

  // sub
  shmq::tool::SubArgs sub_args;
  MaybeOption sub_count{sub_args.count}, sub_timeout{sub_args.timeout_ms};
  CLI::App* sub = app.add_subcommand(
      "sub",
      "Receive the messages of a group: print each (its text, or a JSON line) and ack it. Runs until --count "
      "messages, --timeout-ms without a message, or Ctrl-C/SIGTERM.");
  sub->add_option("NAME", sub_args.channel, "Channel name")->required();
  sub->add_option("--group", sub_args.group, "Group to consume as (created if new)")->required();
  sub_count.add(sub, "--count", "Stop after N messages")->check(at_least(1));
  sub->add_flag("--no-ack", sub_args.no_ack, "Do not ack: the messages stay held, then go back to the group (at most 256)");
  sub->add_option("--from", sub_args.from, "Where a new group starts")
      ->check(CLI::IsMember({"earliest", "latest"}))
      ->capture_default_str();
  sub_timeout.add(sub, "--timeout-ms", "Stop after T ms without a message (default: wait forever)")->check(at_least(0));
  sub->add_flag("--json", sub_args.json, "One JSON object a line: id, key, position, deliveries, timestamp_ns, payload");
  sub->add_flag("--exclusive", sub_args.exclusive,
                "Be the group's only consumer (plain-store takes); refused beside a live consumer of the group");

  // rm
  shmq::tool::RmArgs rm_args;
  CLI::App* rm = app.add_subcommand("rm", "Remove a channel: its shared-memory segment (and, with --journal, its journal).");
  rm->add_option("NAME", rm_args.channel, "Channel name")->required();
  CLI::Option* rm_journal = rm->add_flag(
      "--journal", rm_args.journal,
      "Remove its journal directory too: its messages are gone for good. Without it, a durable channel comes back "
      "from the journal at its next open");
  rm->add_option("--journal-dir", rm_args.journal_dir,
                 "Base directory of the journal (default: where the live segment journals, else $SHMQ_DIR, else ./shmq-data)")
      ->needs(rm_journal);

  // dump
  shmq::tool::DumpArgs dump_args;
  MaybeOption dump_from{dump_args.from}, dump_count{dump_args.count};
  CLI::App* dump = app.add_subcommand(
      "dump",
      "Print the records of a journal (position, inner id, time, flags, key, payload as text), every CRC checked. "
      "Corruption: exit 1 naming the file and position.");
  dump->add_option("TARGET", dump_args.target,
                   "Channel name (its journal: DIR/NAME) or a journal directory (a path with a '/')")
      ->required();
  dump->add_option("--journal-dir", dump_args.journal_dir, "Base directory of the journals (default $SHMQ_DIR, else ./shmq-data)");
  dump_from.add(dump, "--from", "Start at this position")->check(at_least(0));
  dump_count.add(dump, "--count", "Print at most N records")->check(at_least(1));
  dump->add_flag("--json", dump_args.json, "One JSON object a line: position, producer, seq, timestamp_ns, key, payload, payload_bytes, flags");

  // verify
  shmq::tool::VerifyArgs verify_args;
  CLI::App* verify = app.add_subcommand(
      "verify",
      "Read a whole journal and check every record and file link (progress bar on a terminal). Exit 1 naming the "
      "position of any corruption.");
  verify->add_option("TARGET", verify_args.target, "Channel name or journal directory (a path with a '/')")->required();
  verify->add_option("--journal-dir", verify_args.journal_dir, "Base directory of the journals (default $SHMQ_DIR, else ./shmq-data)");
  verify->add_flag("--json", verify_args.json, "Print a JSON object: ok, files, records, bytes, end_position, first_bad_position, torn_bytes, what");

  // recover
  shmq::tool::RecoverArgs recover_args;
  CLI::App* recover = app.add_subcommand(
      "recover",
      "Open a durable channel whose segment is gone (a reboot, shmq rm): rebuilt from its journal, unacked messages "
      "back, producers' sequences kept. Prints what was recovered. A live segment is left as it is.");
  recover->add_option("NAME", recover_args.channel, "Channel name")->required();
  recover->add_option("--journal-dir", recover_args.journal_dir, "Base directory of the journals (default $SHMQ_DIR, else ./shmq-data)");
  recover->add_option("--durability", recover_args.durability,
                      "Durability of the rebuilt channel, at least: the journal records the channel's (also a raise to "
                      "sync by an earlier rebuild) and keeps the stronger; sync raises an async channel for good")
      ->check(CLI::IsMember({"async", "sync"}))
      ->capture_default_str();
  recover->add_flag("--json", recover_args.json, "Print the recovery report as a JSON object");

  // journal
  shmq::tool::JournalArgs journal_args;
  CLI::App* journal = app.add_subcommand(
      "journal",
      "Run the journaler of a durable channel in this process, until Ctrl-C/SIGTERM (for those who want a daemon; "
      "by default any process that opens the channel journals).");
  journal->add_option("NAME", journal_args.channel, "Channel name")->required();

  // dlq
  shmq::tool::DlqArgs dlq_args;
  MaybeOption dlq_count{dlq_args.count};
  CLI::App* dlq = app.add_subcommand(
      "dlq",
      "List the dead letters of a channel (messages delivered max_deliveries times, kept in NAME.dlq), without "
      "touching them; --requeue publishes them to NAME again and removes them from NAME.dlq.");
  dlq->add_option("NAME", dlq_args.channel, "Channel name (not NAME.dlq)")->required();
  CLI::Option* dlq_requeue = dlq->add_flag("--requeue", dlq_args.requeue, "Publish them to NAME again (new inner ids; key and payload kept), then ack them in NAME.dlq");
  dlq_count.add(dlq, "--count", "At most N dead letters")->check(at_least(1));
  dlq->add_option("--producer", dlq_args.producer, "Producer name for --requeue")->capture_default_str()->needs(dlq_requeue);
  dlq->add_flag("--json", dlq_args.json, "One JSON object a line");

  // top
  shmq::tool::TopArgs top_args;
  CLI::App* top = app.add_subcommand(
      "top",
      "Watch the channels (or one): msgs/s, MB/s, depth, per-group lag and in-flight, refreshed in place on a "
      "terminal until Ctrl-C. --once prints one sample for scripts.");
  top->add_option("NAME", top_args.channel, "Only this channel");
  top->add_flag("--once", top_args.once, "Print one sample (rates over --interval-ms) and exit");
  top->add_option("--interval-ms", top_args.interval_ms, "Time between samples")->check(at_least(10))->capture_default_str();
  top->add_flag("--json", top_args.json, "JSON: one object a sample");

  // demo
  shmq::tool::DemoArgs demo_args;
  CLI::App* demo = app.add_subcommand(
      "demo",
      "A live pipeline across processes: 2 producers, fan-out to 2 groups, 3 competing consumers, a consumer "
      "killed and its messages redelivered, a durable channel rebuilt from its journal after every process left and "
      "its segment was lost. Checks every step; exit 0 only if all held.");
  demo->add_option("--messages", demo_args.messages_per_producer, "Messages per producer")
      ->check(CLI::Range(1u, 1'000'000u))
      ->capture_default_str();

#ifdef SHMQ_HAVE_NATS
  CLI::App* bridge = shmq::tool::add_bridge_command(app);  // bridge out|in|stat (tools/bridge_command.cpp)
#endif
  if (unknown_command(app, argc, argv)) return kExitUsage;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints the help, or the error and a hint
    return code == 0 ? kExitOk : kExitUsage;
  }
  for (const MaybeOption* o : {&pub_count, &pub_size, &pub_ring, &pub_max, &sub_count, &sub_timeout, &dump_from,
                               &dump_count, &dlq_count})
    o->set();
  if (!pub_args.journal_dir.empty() && pub_args.durability == "memory") {
    std::fprintf(stderr, "shmq pub: --journal-dir needs --durability async or sync (a Memory channel has no journal)\n");
    return kExitUsage;
  }

  if (sub_args.no_ack && sub_args.count && *sub_args.count > 256) {
    std::fprintf(stderr, "shmq sub: --no-ack holds every message it prints, at most 256: --count %llu is too many\n",
                 static_cast<unsigned long long>(*sub_args.count));
    return kExitUsage;
  }

  const std::string command = app.get_subcommands().front()->get_name();
  try {
    if (*ls) return shmq::tool::cmd_ls(ls_json);
    if (*stat) return shmq::tool::cmd_stat(stat_channel, stat_json);
    if (*pub) return shmq::tool::cmd_pub(pub_args);
    if (*sub) return shmq::tool::cmd_sub(sub_args);
    if (*rm) return shmq::tool::cmd_rm(rm_args);
    if (*dump) return shmq::tool::cmd_dump(dump_args);
    if (*verify) return shmq::tool::cmd_verify(verify_args);
    if (*recover) return shmq::tool::cmd_recover(recover_args);
    if (*journal) return shmq::tool::cmd_journal(journal_args);
    if (*dlq) return shmq::tool::cmd_dlq(dlq_args);
    if (*top) return shmq::tool::cmd_top(top_args);
    if (*demo) return shmq::tool::cmd_demo(demo_args);
#ifdef SHMQ_HAVE_NATS
    if (*bridge) return shmq::tool::cmd_bridge();
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shmq %s: %s\n", command.c_str(), shmq::tool::error_text(e).c_str());
    return kExitFailure;
  }
  return kExitUsage;
}
