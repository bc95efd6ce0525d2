// ls, stat, pub, sub, rm: the subcommands over one channel or the channels of the host.
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#include <shmq/shmq.hpp>

#include "shm/durability.hpp"
#include "tools/bridge_status.hpp"
#include "tools/commands.hpp"
#include "tools/output.hpp"

namespace shmq::tool {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

volatile sig_atomic_t g_stop = 0;

void on_stop_signal(int) { g_stop = 1; }

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string percent(std::uint64_t part, std::uint64_t whole) {
  return whole ? fixed(100.0 * static_cast<double>(part) / static_cast<double>(whole), 1) + "%" : "-";
}

// The group that lags most, or null when there is none.
const GroupStats* most_lagging(const ChannelStats& s) {
  const GroupStats* worst = nullptr;
  for (const GroupStats& g : s.groups)
    if (!worst || g.lag_messages > worst->lag_messages) worst = &g;
  return worst;
}

std::string group_json(const GroupStats& g) {
  return JsonObject()
      .str("name", g.name)
      .num("next_position", g.next_position)
      .num("low_water_mark", g.low_water_mark)
      .num("lag_bytes", g.lag_bytes)
      .num("lag_messages", g.lag_messages)
      .num("delivered", g.delivered)
      .num("consumers", g.consumers)
      .num("in_flight", g.in_flight)
      .num("given_back", g.given_back)
      .done();
}

std::string producer_json(const ProducerStats& p) {
  return JsonObject()
      .str("name", p.name)
      .num("id", p.id)
      .num("next_seq", p.next_seq)
      .num("published", p.published)
      .num("pid", p.pid)
      .num("alive", p.alive)
      .done();
}

}  // namespace

const char* durability_name(Durability d) {
  switch (d) {
    case Durability::Memory: return "Memory";
    case Durability::Async: return "Async";
    case Durability::Sync: return "Sync";
  }
  return "unknown";
}

void wait_for_journaler(const Channel& ch, milliseconds timeout) {
  if (ch.options().durability == Durability::Memory) return;
  const auto give_up = Clock::now() + timeout;
  while (ch.stats().journaler_pid == 0 && Clock::now() < give_up) {
    timespec ts{0, 5'000'000};
    ::nanosleep(&ts, nullptr);
  }
}

std::string error_text(const std::exception& e) {
  std::string text = e.what();
  if (const auto* se = dynamic_cast<const std::system_error*>(&e); se && se->code() == std::errc::illegal_byte_sequence) {
    const std::string suffix = ": " + se->code().message();
    if (text.size() > suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0)
      text.erase(text.size() - suffix.size());
  }
  return text;
}

Durability parse_durability(const std::string& word) {
  if (word == "sync") return Durability::Sync;
  if (word == "async") return Durability::Async;
  return Durability::Memory;
}

std::string stats_json(const ChannelStats& s) {
  std::vector<std::string> groups, producers;
  for (const GroupStats& g : s.groups) groups.push_back(group_json(g));
  for (const ProducerStats& p : s.producers) producers.push_back(producer_json(p));
  return JsonObject()
      .str("name", s.name)
      .num("ring_bytes", s.ring_bytes)
      .num("max_message_bytes", s.max_message_bytes)
      .str("durability", durability_name(s.durability))
      .num("write_position", s.write_position)
      .num("reclaimed_position", s.reclaimed_position)
      .num("durable_position", s.durable_position)
      .num("depth_bytes", s.depth_bytes)
      .num("live_producers", s.live_producers)
      .num("live_consumers", s.live_consumers)
      .num("journaler_pid", s.journaler_pid)
      .str("journal_dir", s.journal_dir)
      .num("durable_lag_bytes", s.durable_lag_bytes)
      .raw("durable_lag_ms", fixed(s.durable_lag_ms, 3))
      .num("journal_errors", s.journal_errors)
      .raw("groups", json_array(groups))
      .raw("producers", json_array(producers))
      .raw("bridges", bridge_rows_json(bridge_rows(s.name)))
      .done();
}

std::optional<std::filesystem::path> find_journal(const char* command, const std::string& target,
                                                  const std::string& journal_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool looks_like_path = target.find('/') != std::string::npos || target == "." || target == "..";
  if (looks_like_path) {
    if (!fs::is_directory(target, ec)) {
      std::fprintf(stderr, "shmq %s: %s is not a directory (%s)\n", command, target.c_str(),
                   fs::exists(target, ec) ? "a file" : "no such directory");
      return std::nullopt;
    }
    return fs::path(target);
  }
  bool valid_name = true;
  fs::path journal;
  try {
    journal = detail::journal_path_for(target, journal_dir);
    if (fs::is_directory(journal, ec)) return journal;
    // Not under the default base: a live segment knows where its creator put the journal.
    if (journal_dir.empty() && Channel::exists(target)) {
      const ChannelStats s = Channel::attach(target, /*run_journaler=*/false).stats();
      if (!s.journal_dir.empty() && fs::is_directory(s.journal_dir, ec)) return fs::path(s.journal_dir);
      if (s.durability == Durability::Memory) {
        std::fprintf(stderr, "shmq %s: channel '%s' is a Memory channel: it has no journal\n", command, target.c_str());
        return std::nullopt;
      }
    }
  } catch (const Error&) {
    valid_name = false;  // not a channel name: maybe a directory
  }
  if (fs::is_directory(target, ec)) return fs::path(target);
  if (!valid_name)
    std::fprintf(stderr, "shmq %s: '%s' is neither a channel name nor a directory\n", command, target.c_str());
  else
    std::fprintf(stderr, "shmq %s: no journal for channel '%s': %s does not exist (is it elsewhere? --journal-dir DIR, or $SHMQ_DIR)\n",
                 command, target.c_str(), journal.c_str());
  return std::nullopt;
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking read or wait returns, and the loop sees the flag
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() noexcept { return g_stop != 0; }

void sleep_unless_stopped(milliseconds d) {
  const auto end = Clock::now() + d;
  while (!stop_requested()) {
    const auto now = Clock::now();
    if (now >= end) return;
    const auto slice = std::min<Clock::duration>(end - now, milliseconds(50));
    timespec ts{0, static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(slice).count())};
    ::nanosleep(&ts, nullptr);  // a signal ends it early
  }
}

// ---- ls ------------------------------------------------------------------------------------------

int cmd_ls(bool json) {
  struct Row {
    std::string name;
    std::optional<ChannelStats> stats;
    std::string error;
  };
  std::vector<Row> rows;
  for (const std::string& name : Channel::list()) {
    Row row{name, std::nullopt, {}};
    try {
      row.stats = Channel::attach(name, /*run_journaler=*/false).stats();
    } catch (const std::exception& e) {
      row.error = e.what();
      // The row names the channel already.
      if (const std::string prefix = "shmq channel '" + name + "': "; row.error.rfind(prefix, 0) == 0)
        row.error.erase(0, prefix.size());
    }
    rows.push_back(std::move(row));
  }

  if (json) {
    std::vector<std::string> items;
    for (const Row& r : rows) {
      JsonObject o;
      o.str("name", r.name);
      if (!r.stats) {
        items.push_back(o.str("error", r.error).done());
        continue;
      }
      const ChannelStats& s = *r.stats;
      std::vector<std::string> groups;
      for (const GroupStats& g : s.groups)
        groups.push_back(JsonObject().str("name", g.name).num("lag_messages", g.lag_messages).num("lag_bytes", g.lag_bytes).done());
      const GroupStats* worst = most_lagging(s);
      items.push_back(o.str("durability", durability_name(s.durability))
                          .num("ring_bytes", s.ring_bytes)
                          .num("depth_bytes", s.depth_bytes)
                          .num("producers", s.producers.size())
                          .num("live_producers", s.live_producers)
                          .num("live_consumers", s.live_consumers)
                          .num("max_lag_messages", worst ? worst->lag_messages : 0)
                          .raw("groups", json_array(groups))
                          .done());
    }
    std::printf("%s\n", json_array(items).c_str());
    return kExitOk;
  }

  if (rows.empty()) {
    std::printf("no channels on this host (no /dev/shm/shmq.*)\n");
    return kExitOk;
  }
  Table t({"NAME", "RING USED", "PRODUCERS", "GROUPS", "CONSUMERS", "MAX LAG"});
  for (const Row& r : rows) {
    if (!r.stats) {
      t.add({r.name, "error: " + r.error});
      continue;
    }
    const ChannelStats& s = *r.stats;
    const GroupStats* worst = most_lagging(s);
    t.add({r.name,
           human_bytes(s.depth_bytes) + " of " + human_bytes(s.ring_bytes) + " (" + percent(s.depth_bytes, s.ring_bytes) + ")",
           std::to_string(s.live_producers) + " live / " + std::to_string(s.producers.size()),
           std::to_string(s.groups.size()), std::to_string(s.live_consumers),
           worst ? std::to_string(worst->lag_messages) + " msgs (" + worst->name + ")" : "-"});
  }
  t.print(stdout);
  return kExitOk;
}

// ---- stat ----------------------------------------------------------------------------------------

int cmd_stat(const std::string& channel, bool json) {
  const ChannelStats s = Channel::attach(channel, /*run_journaler=*/false).stats();
  if (json) {
    std::printf("%s\n", stats_json(s).c_str());
    return kExitOk;
  }
  Table top({"channel", s.name});
  top.add({"durability", durability_name(s.durability)});
  top.add({"ring", human_bytes(s.ring_bytes) + ", messages up to " + human_bytes(s.max_message_bytes)});
  top.add({"write position", std::to_string(s.write_position) + " (" + fixed(static_cast<double>(s.write_position) / static_cast<double>(s.ring_bytes), 2) + " x the ring)"});
  top.add({"reclaimed position", std::to_string(s.reclaimed_position)});
  top.add({"durable position", std::to_string(s.durable_position) +
                                    (s.durability == Durability::Memory
                                         ? std::string(" (Memory: the segment is all there is)")
                                         : " (" + human_bytes(s.durable_lag_bytes) + " not durable yet" +
                                               (s.durable_lag_bytes ? ", the oldest for " + fixed(s.durable_lag_ms, 1) + " ms" : std::string()) + ")")});
  if (s.durability != Durability::Memory)
    top.add({"journal", s.journal_dir + (s.journaler_pid == ::getpid() ? std::string(", no other journaler (this process took the role while it looked)")
                                         : s.journaler_pid ? ", journaler pid " + std::to_string(s.journaler_pid)
                                                           : std::string(", no journaler running")) +
                                         (s.journal_errors ? ", " + std::to_string(s.journal_errors) + " journaling errors" : std::string())});
  top.add({"depth", human_bytes(s.depth_bytes) + " (" + percent(s.depth_bytes, s.ring_bytes) + " of the ring)"});
  top.add({"producers", std::to_string(s.producers.size()) + " known, " + std::to_string(s.live_producers) + " live"});
  top.add({"groups", std::to_string(s.groups.size())});
  top.add({"consumers", std::to_string(s.live_consumers) + " live"});
  top.print(stdout);

  if (!s.producers.empty()) {
    std::printf("\nproducers\n");
    Table t({"NAME", "ID", "NEXT SEQ", "PUBLISHED", "PID", "ALIVE"});
    for (const ProducerStats& p : s.producers)
      t.add({p.name, std::to_string(p.id), std::to_string(p.next_seq), std::to_string(p.published),
             p.pid ? std::to_string(p.pid) : "-", p.alive ? "yes" : "no"});
    t.print(stdout, "  ");
  }
  if (!s.groups.empty()) {
    std::printf("\ngroups\n");
    Table t({"NAME", "LAG MSGS", "LAG BYTES", "IN FLIGHT", "CONSUMERS", "DELIVERED", "NEXT POS", "LOW WATER"});
    for (const GroupStats& g : s.groups)
      t.add({g.name, std::to_string(g.lag_messages), std::to_string(g.lag_bytes), std::to_string(g.in_flight),
             std::to_string(g.consumers), std::to_string(g.delivered), std::to_string(g.next_position),
             std::to_string(g.low_water_mark)});
    t.print(stdout, "  ");
  }
  if (const std::vector<BridgeRow> bridges = bridge_rows(s.name); !bridges.empty()) {
    std::printf("\nbridges (shmq bridge stat)\n");
    print_bridge_rows(stdout, bridges, "  ");
  }
  return kExitOk;
}

// ---- pub -----------------------------------------------------------------------------------------

namespace {

class Publisher {
 public:
  Publisher(Channel& ch, const PubArgs& a) : ch_(ch), args_(a), producer_(ch, a.producer, {.exclusive = a.exclusive}) {
    options_.key = args_.key;
    options_.wait = Wait::Block;
    options_.timeout = milliseconds(200);  // a slice: stop_requested() is looked at between slices
    if (args_.sync) options_.durability = Durability::Sync;
  }

  // Publishes one message, waiting on a full ring up to --timeout-ms (and, with --sync, for the
  // journal as long). Prints why on failure.
  bool publish(std::string_view payload) {
    const auto give_up = Clock::now() + milliseconds(args_.full_timeout_ms);
    if (args_.seq) options_.seq = *args_.seq + count_ + duplicates_;
    for (;;) {
      const Published p = producer_.publish(payload, options_);
      if (p.status == Status::Duplicate) {  // --seq: accepted before (a re-run): nothing appended
        ++duplicates_;
        return true;
      }
      if (p.status == Status::Timeout) {
        // Sync: appended, not durable yet. Never publish it again (that would be a second
        // message): wait for the journal.
        while (!producer_.flush(milliseconds(200)))
          if (stop_requested() || Clock::now() >= give_up) {
            report_not_durable(count_ + 1);
            return false;
          }
        return counted(payload);
      }
      if (p.status == Status::Ok) return counted(payload);
      if (p.status == Status::WouldBlock && !stop_requested() && Clock::now() < give_up) continue;
      if (p.status == Status::WouldBlock && stop_requested()) return false;
      report_failure(p.status, payload.size());
      return false;
    }
  }

  // A durable channel: waits until everything published is in the journal (the journaler of any
  // process of the channel writes it). False (reason printed) after --timeout-ms.
  bool flush() {
    if (ch_.options().durability == Durability::Memory || count_ == 0) return true;
    const auto give_up = Clock::now() + milliseconds(args_.full_timeout_ms);
    while (!producer_.flush(milliseconds(200)))
      if (stop_requested() || Clock::now() >= give_up) {
        report_not_durable(count_);
        return false;
      }
    return true;
  }

  void summary(Clock::time_point t0) const {
    const double secs = seconds_since(t0);
    const Durability d = options_.durability.value_or(ch_.options().durability);
    const std::string dups = args_.seq ? ", " + std::to_string(duplicates_) + " dropped as duplicates" : "";
    std::fprintf(stderr, "shmq pub: %llu messages (%s%s) to '%s' as producer '%s' in %s s: %s msgs/s, %s/s%s\n",
                 static_cast<unsigned long long>(count_), human_bytes(bytes_).c_str(), dups.c_str(), args_.channel.c_str(),
                 args_.producer.c_str(), fixed(secs, 3).c_str(),
                 human_rate(secs > 0 ? static_cast<double>(count_) / secs : 0).c_str(),
                 human_bytes(secs > 0 ? static_cast<std::uint64_t>(static_cast<double>(bytes_) / secs) : 0).c_str(),
                 d == Durability::Sync    ? ", each durable before the next (Sync)"
                 : d == Durability::Async ? ", durable (Async, journal flushed at the end)"
                                          : "");
  }
  std::uint64_t count() const { return count_; }

 private:
  bool counted(std::string_view payload) {
    ++count_;
    bytes_ += payload.size();
    return true;
  }

  void report_not_durable(std::uint64_t n) const {
    std::string who = "no journaler is running";
    try {
      const ChannelStats s = ch_.stats();
      if (s.journaler_pid) who = "journaler pid " + std::to_string(s.journaler_pid);
      who += ", durable position " + std::to_string(s.durable_position) + " of " + std::to_string(s.write_position);
    } catch (const std::exception&) {
    }
    std::fprintf(stderr,
                 "shmq pub: message %llu to '%s' was published but is not durable after %llu ms (%s; journal %s)\n",
                 static_cast<unsigned long long>(n), args_.channel.c_str(),
                 static_cast<unsigned long long>(args_.full_timeout_ms), who.c_str(),
                 ch_.options().journal_dir.c_str());
  }

  void report_failure(Status st, std::size_t size) const {
    const std::string where = "shmq pub: message " + std::to_string(count_ + 1) + " to '" + args_.channel + "'";
    if (st == Status::TooLarge) {
      std::fprintf(stderr, "%s: too large: %zu bytes of payload and %zu of key; the channel takes at most %zu bytes\n",
                   where.c_str(), size, args_.key.size(), ch_.options().max_message_bytes);
    } else if (st == Status::WouldBlock) {
      std::string why;
      try {
        const ChannelStats s = ch_.stats();
        if (const GroupStats* g = most_lagging(s))
          why = "; group '" + g->name + "' lags " + std::to_string(g->lag_messages) + " messages with " +
                std::to_string(g->consumers) + " live consumer(s)";
        if (s.durability != Durability::Memory && s.durable_position < s.write_position && s.journaler_pid == 0)
          why += "; no journaler is running and the journal holds the ring too";
      } catch (const std::exception&) {
      }
      std::fprintf(stderr, "%s: the ring stayed full for %llu ms (back-pressure from the slowest group%s)\n",
                   where.c_str(), static_cast<unsigned long long>(args_.full_timeout_ms), why.c_str());
    } else {
      std::fprintf(stderr, "%s: publish failed: %s\n", where.c_str(), to_string(st));
    }
  }

  Channel& ch_;
  const PubArgs& args_;
  Producer producer_;
  PublishOptions options_;
  std::uint64_t count_ = 0;
  std::uint64_t duplicates_ = 0;  // with --seq
  std::uint64_t bytes_ = 0;
};

// Notes where an existing channel differs from what --create asked; false (reason printed) when
// it cannot be used as asked (another durability).
bool check_existing(const Channel& ch, const PubArgs& a) {
  const ChannelOptions& eff = ch.options();
  if (!a.durability.empty() && eff.durability != parse_durability(a.durability)) {
    std::fprintf(stderr, "shmq pub: channel '%s' exists with Durability::%s; --durability %s was asked (remove it first, or leave out --durability)\n",
                 a.channel.c_str(), durability_name(eff.durability), a.durability.c_str());
    return false;
  }
  if (a.ring_bytes && eff.ring_bytes != *a.ring_bytes)
    std::fprintf(stderr, "shmq pub: note: channel '%s' exists with a ring of %zu bytes; --ring-bytes is ignored\n",
                 a.channel.c_str(), eff.ring_bytes);
  if (a.max_message_bytes && eff.max_message_bytes != *a.max_message_bytes)
    std::fprintf(stderr, "shmq pub: note: channel '%s' exists with max_message_bytes %zu; --max-message-bytes is ignored\n",
                 a.channel.c_str(), eff.max_message_bytes);
  if (!a.journal_dir.empty() && eff.durability != Durability::Memory &&
      detail::journal_path_for(a.channel, a.journal_dir) != eff.journal_dir)
    std::fprintf(stderr, "shmq pub: note: channel '%s' exists and journals to %s; --journal-dir is ignored\n",
                 a.channel.c_str(), eff.journal_dir.c_str());
  return true;
}

// The channel to publish to; nullopt (the reason printed) when it does not exist and --create was
// not given, or exists otherwise than --create asked. Attaching adopts the segment's durability.
std::optional<Channel> open_for_pub(const PubArgs& a) {
  if (!a.create || Channel::exists(a.channel)) {
    try {
      Channel ch = Channel::attach(a.channel);
      if (a.create && !check_existing(ch, a)) return std::nullopt;
      return ch;
    } catch (const Error& e) {
      if (e.code() != std::errc::no_such_file_or_directory) throw;
      if (!a.create) {
        std::fprintf(stderr, "shmq pub: %s (use --create to create it)\n", e.what());
        return std::nullopt;
      }
      // Removed between exists() and attach(): create it below.
    }
  }
  ChannelOptions o;
  o.durability = a.durability.empty() ? ChannelOptions{}.durability : parse_durability(a.durability);  // the library's default
  o.journal_dir = a.journal_dir;
  if (a.ring_bytes) o.ring_bytes = *a.ring_bytes;
  o.prefault = !a.no_prefault;
  o.huge_pages = a.huge_pages;
  // The library's default (1 MiB) is too large for a ring under 4 MiB: take a quarter of the ring.
  o.max_message_bytes = a.max_message_bytes ? *a.max_message_bytes : std::min<std::size_t>(o.max_message_bytes, o.ring_bytes / 4);
  Channel ch = Channel::open(a.channel, o);
  if (!ch.recovery().recovered && ch.options().durability == o.durability) {
    if (!check_existing(ch, a)) return std::nullopt;  // made by another process meanwhile
  }
  if (ch.recovery().recovered) {
    const RecoveryReport& r = ch.recovery();
    std::fprintf(stderr, "shmq pub: note: channel '%s' was rebuilt from its journal in %s (%llu messages put back)\n",
                 a.channel.c_str(), ch.options().journal_dir.c_str(), static_cast<unsigned long long>(r.records));
  }
  return ch;
}

}  // namespace

int cmd_pub(const PubArgs& a) {
  if (a.sync && a.create && a.durability == "memory") {
    std::fprintf(stderr, "shmq pub: --sync needs a durable channel: create '%s' with --durability async or sync\n",
                 a.channel.c_str());
    return kExitFailure;
  }
  std::optional<Channel> ch = open_for_pub(a);
  if (!ch) return kExitFailure;
  if (a.sync && ch->options().durability == Durability::Memory) {
    std::fprintf(stderr,
                 "shmq pub: --sync: channel '%s' is a Memory channel, it has no journal to sync to (create it with "
                 "--durability async or sync)\n",
                 a.channel.c_str());
    return kExitFailure;
  }
  Publisher pub(*ch, a);
  install_stop_handlers();
  const auto t0 = Clock::now();
  bool ok = true;

  if (a.count) {
    const std::uint64_t n = *a.count;
    std::string payload(a.size.value_or(0), '\0');
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>('a' + i % 26);
    for (std::uint64_t i = 0; i < n && ok; ++i) {
      if (stop_requested()) break;
      // "#<i> " at the start, where it fits: each message tells which one it is.
      char tag[32];
      const int len = std::snprintf(tag, sizeof tag, "#%llu ", static_cast<unsigned long long>(i + 1));
      std::memcpy(payload.data(), tag, std::min(payload.size(), static_cast<std::size_t>(len)));
      ok = pub.publish(payload);
    }
    ok = pub.flush() && ok;
    pub.summary(t0);
    if (ok && pub.count() < n) {
      std::fprintf(stderr, "shmq pub: interrupted after %llu of %llu messages\n",
                   static_cast<unsigned long long>(pub.count()), static_cast<unsigned long long>(n));
      return kExitFailure;
    }
    return ok ? kExitOk : kExitFailure;
  }

  char* line = nullptr;
  std::size_t cap = 0;
  for (;;) {
    if (stop_requested()) break;
    errno = 0;
    const ssize_t len = ::getline(&line, &cap, stdin);
    if (len < 0) {
      if (errno != 0 && errno != EINTR) {
        std::fprintf(stderr, "shmq pub: reading stdin: %s\n", std::strerror(errno));
        ok = false;
      }
      break;
    }
    std::string_view text(line, static_cast<std::size_t>(len));
    if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
    if (!(ok = pub.publish(text))) break;
  }
  std::free(line);
  ok = pub.flush() && ok;
  pub.summary(t0);
  return ok ? kExitOk : kExitFailure;
}

// ---- sub -----------------------------------------------------------------------------------------

namespace {

// Prints messages and acks them once they have left the process: a message is acked only after
// the flush of stdout that wrote it succeeded, so `| head` or a full disk loses none of them (they
// go back to the group when the consumer leaves). Acks are batched to keep flushes few.
class Printer {
 public:
  static constexpr std::size_t kBatch = 32;  // below the consumer's max_in_flight (64)

  Printer(Consumer& c, const SubArgs& a) : consumer_(c), args_(a) { printed_.reserve(kBatch); }

  // False when stdout failed (reason printed, or EPIPE: the reader left).
  bool print(const Message& m) {
    if (args_.json) {
      const std::string line = JsonObject()
                                   .raw("id", JsonObject().num("producer", m.id().producer).num("seq", m.id().seq).done())
                                   .str("key", m.key())
                                   .num("position", m.position())
                                   .num("deliveries", m.deliveries())
                                   .num("timestamp_ns", m.timestamp_ns())
                                   .str("payload", m.text())
                                   .done();
      std::fwrite(line.data(), 1, line.size(), stdout);
    } else {
      std::fwrite(m.text().data(), 1, m.text().size(), stdout);
    }
    std::fputc('\n', stdout);
    if (!args_.no_ack) printed_.push_back(m);
    return printed_.size() < kBatch || flush_and_ack();
  }

  // Flushes stdout, then acks what it carried. False when stdout failed or an ack did.
  bool flush_and_ack() {
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
      if (errno != EPIPE) std::fprintf(stderr, "shmq sub: writing to stdout: %s\n", std::strerror(errno));
      failed_ = errno != EPIPE;
      return false;
    }
    for (const Message& m : printed_) {
      if (const Status st = consumer_.ack(m); st != Status::Ok) {
        std::fprintf(stderr, "shmq sub: ack of message %llu:%llu failed: %s\n",
                     static_cast<unsigned long long>(m.id().producer), static_cast<unsigned long long>(m.id().seq),
                     to_string(st));
        failed_ = true;
        return false;
      }
    }
    printed_.clear();
    return true;
  }
  bool failed() const { return failed_; }

 private:
  Consumer& consumer_;
  const SubArgs& args_;
  std::vector<Message> printed_;  // printed, not yet flushed and acked
  bool failed_ = false;
};

}  // namespace

int cmd_sub(const SubArgs& a) {
  Channel ch = Channel::attach(a.channel);
  ConsumerOptions o;
  o.start = a.from == "latest" ? Start::Latest : Start::Earliest;
  o.wait = Wait::Block;
  // Without acks every printed message stays held: allow the most the library does.
  o.max_in_flight = a.no_ack ? 256 : 64;
  o.exclusive = a.exclusive;
  Consumer consumer(ch, a.group, o);
  Printer printer(consumer, a);
  install_stop_handlers();
  ::signal(SIGPIPE, SIG_IGN);  // a closed pipe (| head) shows as a write error: stop cleanly

  const milliseconds slice(100);  // longest wait between looks at stop_requested()
  const bool idle_stops = a.timeout_ms.has_value();
  const milliseconds idle_limit(a.timeout_ms.value_or(0));
  auto last_message = Clock::now();
  std::uint64_t received = 0;
  bool idle_timeout = false;

  while ((!a.count || received < *a.count) && !stop_requested()) {
    std::optional<Message> m = consumer.poll();
    if (!m && consumer.status() == Status::Timeout) {
      if (!printer.flush_and_ack()) break;  // about to wait: deliver what was printed first
      milliseconds wait = slice;
      if (idle_stops)
        wait = std::min(wait, std::chrono::duration_cast<milliseconds>(idle_limit - (Clock::now() - last_message)));
      m = consumer.poll(std::max(wait, milliseconds(0)));
    }
    if (!m) {
      const Status st = consumer.status();
      if (st == Status::Closed) {
        std::fprintf(stderr, "shmq sub: group '%s' of channel '%s' was removed\n", a.group.c_str(), a.channel.c_str());
        return kExitFailure;
      }
      if (st == Status::WouldBlock) {
        std::fprintf(stderr, "shmq sub: holding %u messages without acking (--no-ack), the most a consumer may; stopping\n",
                     consumer.in_flight());
        break;
      }
      if (idle_stops && Clock::now() - last_message >= idle_limit) {
        idle_timeout = true;
        break;
      }
      continue;
    }
    if (!printer.print(*m)) break;
    ++received;
    last_message = Clock::now();
  }
  const bool flushed = printer.flush_and_ack();
  wait_for_journaler(ch, milliseconds(2000));  // its acks, and a group it made, checkpointed
  if (!flushed) return printer.failed() ? kExitFailure : kExitOk;
  if (a.count && received < *a.count && idle_timeout) {
    std::fprintf(stderr, "shmq sub: received %llu of %llu messages; none came for %llu ms\n",
                 static_cast<unsigned long long>(received), static_cast<unsigned long long>(*a.count),
                 static_cast<unsigned long long>(*a.timeout_ms));
    return kExitFailure;
  }
  return kExitOk;
}

// ---- rm ------------------------------------------------------------------------------------------

int cmd_rm(const RmArgs& a) {
  const std::string& channel = a.channel;
  const bool segment = Channel::exists(channel);  // throws for a bad name
  if (!a.journal) {
    if (!segment) {
      std::fprintf(stderr, "shmq rm: channel '%s' does not exist (no /dev/shm/shmq.%s)\n", channel.c_str(), channel.c_str());
      return kExitFailure;
    }
    Channel::remove(channel);
  } else {
    // The journal's base directory: --journal-dir, else where the live segment journals, else
    // $SHMQ_DIR or ./shmq-data (as Channel::open would take it).
    std::filesystem::path base = a.journal_dir;
    if (base.empty() && segment) {
      try {
        const std::string dir = Channel::attach(channel, /*run_journaler=*/false).stats().journal_dir;
        if (!dir.empty()) base = std::filesystem::path(dir).parent_path();
      } catch (const Error&) {
        // Removed meanwhile, or unreadable: the default below.
      }
    }
    if (base.empty()) base = detail::journal_path_for(channel, {}).parent_path();
    const std::filesystem::path journal = detail::journal_path_for(channel, base);
    std::error_code ec;
    const bool has_journal = std::filesystem::exists(journal, ec);
    if (!segment && !has_journal) {
      std::fprintf(stderr, "shmq rm: channel '%s' does not exist (no /dev/shm/shmq.%s, no journal at %s)\n",
                   channel.c_str(), channel.c_str(), journal.c_str());
      return kExitFailure;
    }
    Channel::remove(channel, base);
    if (!has_journal)
      std::fprintf(stderr, "shmq rm: note: channel '%s' had no journal at %s\n", channel.c_str(), journal.c_str());
    if (std::filesystem::exists(journal, ec)) {
      std::fprintf(stderr, "shmq rm: the journal of '%s' is still there after removing it: %s\n", channel.c_str(),
                   journal.c_str());
      return kExitFailure;
    }
  }
  if (Channel::exists(channel)) {
    std::fprintf(stderr, "shmq rm: channel '%s' is still there after removing it (permissions of /dev/shm/shmq.%s?)\n",
                 channel.c_str(), channel.c_str());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace shmq::tool
