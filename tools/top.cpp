// top: the channels of the host (or one), refreshed in place on a terminal.
//
// Rates come from two samples of ChannelStats: msgs/s from the change of the producers' published
// counts, MB/s from the change of the write position (record frames, headers included), deliveries/s
// per group from the change of its delivered count. The first screen shows "-" for rates (one
// sample only). --once takes two samples --interval-ms apart and prints one screen (or one JSON
// object with --json) for scripts. Without a terminal and without --once it prints a screen every
// interval, one after the other, or a JSON line every interval with --json.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <shmq/shmq.hpp>
#include <string>
#include <vector>

#include "tools/commands.hpp"
#include "tools/bridge_status.hpp"
#include "tools/output.hpp"

namespace shmq::tool {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Sample {
  Clock::time_point at;
  std::optional<ChannelStats> stats;
  std::string error;
};

std::uint64_t published(const ChannelStats& s) {
  std::uint64_t n = 0;
  for (const ProducerStats& p : s.producers) n += p.published;
  return n;
}

// Per-second change of a counter between two samples; nullopt without an earlier sample.
std::optional<double> rate(std::uint64_t before, std::uint64_t now, double secs) {
  if (secs <= 0) return std::nullopt;
  return static_cast<double>(now - std::min(before, now)) / secs;
}

// One channel at two moments.
struct Row {
  std::string name;
  const Sample* now = nullptr;
  const Sample* before = nullptr;  // null on the first screen

  double secs() const { return before ? std::chrono::duration<double>(now->at - before->at).count() : 0; }
  bool comparable() const { return before && before->stats && now->stats; }
  std::optional<double> msgs_per_s() const {
    return comparable() ? rate(published(*before->stats), published(*now->stats), secs()) : std::nullopt;
  }
  std::optional<double> bytes_per_s() const {
    return comparable() ? rate(before->stats->write_position, now->stats->write_position, secs()) : std::nullopt;
  }
  std::optional<double> delivered_per_s(const GroupStats& g) const {
    if (!comparable()) return std::nullopt;
    for (const GroupStats& b : before->stats->groups)
      if (b.name == g.name) return rate(b.delivered, g.delivered, secs());
    return std::nullopt;
  }
};

std::string rate_text(const std::optional<double>& r) { return r ? human_rate(*r) : "-"; }
std::string mb_text(const std::optional<double>& r) { return r ? fixed(*r / 1e6, 2) : "-"; }

std::string local_clock() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
  return buf;
}

std::string screen(const std::vector<Row>& rows, const TopArgs& a) {
  std::string out;
  char head[256];
  std::snprintf(head, sizeof head, "shmq top  %s  %zu channel%s  every %s s%s\n\n", local_clock().c_str(), rows.size(),
                rows.size() == 1 ? "" : "s", fixed(static_cast<double>(a.interval_ms) / 1000.0, 1).c_str(),
                a.once ? "" : "  (Ctrl-C quits)");
  out += head;
  if (rows.empty()) return out + "no channels on this host (no /dev/shm/shmq.*)\n";
  for (const Row& r : rows) {
    if (!r.now->stats) {
      out += r.name + "  error: " + r.now->error + "\n\n";
      continue;
    }
    const ChannelStats& s = *r.now->stats;
    out += r.name + "  " + durability_name(s.durability) + "  " + rate_text(r.msgs_per_s()) + " msgs/s  " +
           mb_text(r.bytes_per_s()) + " MB/s  depth " + human_bytes(s.depth_bytes) + " of " + human_bytes(s.ring_bytes) +
           "  producers " + std::to_string(s.live_producers) + "/" + std::to_string(s.producers.size()) + " live  consumers " +
           std::to_string(s.live_consumers) +
           (s.durability == Durability::Memory
                ? std::string()
                : "  not durable " + human_bytes(s.durable_lag_bytes) +
                      (s.durable_lag_bytes ? " (" + fixed(s.durable_lag_ms, 1) + " ms)" : std::string()) +
                      (s.journal_errors ? "  journal errors " + std::to_string(s.journal_errors) : std::string())) +
           "\n";
    if (s.groups.empty()) {
      out += "  (no group)\n\n";
      continue;
    }
    Table t({"GROUP", "LAG MSGS", "LAG BYTES", "IN FLIGHT", "GIVEN BACK", "CONSUMERS", "DELIVERED/S"});
    for (const GroupStats& g : s.groups)
      t.add({g.name, std::to_string(g.lag_messages), human_bytes(g.lag_bytes), std::to_string(g.in_flight),
             std::to_string(g.given_back), std::to_string(g.consumers), rate_text(r.delivered_per_s(g))});
    const std::vector<BridgeRow> bridges = bridge_rows(s.name);
    char* buf = nullptr;
    std::size_t len = 0;
    if (std::FILE* mem = ::open_memstream(&buf, &len)) {
      t.print(mem, "  ");
      if (!bridges.empty()) print_bridge_rows(mem, bridges, "  ");  // the NATS bridges of the channel
      std::fclose(mem);
      out.append(buf, len);
      std::free(buf);
    }
    out += "\n";
  }
  return out;
}

std::string sample_json(const std::vector<Row>& rows, const TopArgs& a) {
  std::vector<std::string> channels;
  auto number = [](const std::optional<double>& v) { return v ? fixed(*v, 1) : std::string("null"); };
  for (const Row& r : rows) {
    JsonObject o;
    o.str("name", r.name);
    if (!r.now->stats) {
      channels.push_back(o.str("error", r.now->error).done());
      continue;
    }
    const ChannelStats& s = *r.now->stats;
    std::vector<std::string> groups;
    for (const GroupStats& g : s.groups)
      groups.push_back(JsonObject()
                           .str("name", g.name)
                           .num("lag_messages", g.lag_messages)
                           .num("lag_bytes", g.lag_bytes)
                           .num("in_flight", g.in_flight)
                           .num("given_back", g.given_back)
                           .num("consumers", g.consumers)
                           .raw("delivered_per_s", number(r.delivered_per_s(g)))
                           .done());
    channels.push_back(o.str("durability", durability_name(s.durability))
                           .raw("msgs_per_s", number(r.msgs_per_s()))
                           .raw("bytes_per_s", number(r.bytes_per_s()))
                           .num("write_position", s.write_position)
                           .num("durable_position", s.durable_position)
                           .num("durable_lag_bytes", s.durable_lag_bytes)
                           .raw("durable_lag_ms", fixed(s.durable_lag_ms, 3))
                           .num("journal_errors", s.journal_errors)
                           .num("depth_bytes", s.depth_bytes)
                           .num("ring_bytes", s.ring_bytes)
                           .num("live_producers", s.live_producers)
                           .num("live_consumers", s.live_consumers)
                           .raw("groups", json_array(groups))
                           .raw("bridges", bridge_rows_json(bridge_rows(s.name)))
                           .done());
  }
  return JsonObject().num("interval_ms", a.interval_ms).raw("channels", json_array(channels)).done();
}

// The channels top watches, attached once and kept (a channel removed meanwhile drops out).
class Watch {
 public:
  explicit Watch(const TopArgs& a) : args_(a) {}

  // False (reason printed) when the one channel asked for does not exist.
  bool sample() {
    std::vector<std::string> names;
    if (!args_.channel.empty()) {
      if (!Channel::exists(args_.channel)) {
        std::fprintf(stderr, "shmq top: channel '%s' does not exist (no /dev/shm/shmq.%s)\n", args_.channel.c_str(),
                     args_.channel.c_str());
        return false;
      }
      names.push_back(args_.channel);
    } else {
      names = Channel::list();
    }
    previous_ = std::move(current_);
    current_.clear();
    for (auto it = open_.begin(); it != open_.end();)  // gone: stop watching
      it = std::find(names.begin(), names.end(), it->first) == names.end() ? open_.erase(it) : std::next(it);
    for (const std::string& name : names) {
      Sample s{Clock::now(), std::nullopt, {}};
      try {
        auto it = open_.find(name);
        if (it == open_.end()) it = open_.emplace(name, Channel::attach(name, /*run_journaler=*/false)).first;
        s.stats = it->second.stats();
        s.at = Clock::now();
      } catch (const std::exception& e) {
        s.error = e.what();
        if (const std::string prefix = "shmq channel '" + name + "': "; s.error.rfind(prefix, 0) == 0)
          s.error.erase(0, prefix.size());
      }
      current_.emplace(name, std::move(s));
    }
    return true;
  }

  std::vector<Row> rows() const {
    std::vector<Row> out;
    for (const auto& [name, s] : current_) {
      Row r{name, &s, nullptr};
      if (auto it = previous_.find(name); it != previous_.end()) r.before = &it->second;
      out.push_back(r);
    }
    return out;
  }

 private:
  const TopArgs& args_;
  std::map<std::string, Channel> open_;
  std::map<std::string, Sample> current_, previous_;
};

}  // namespace

int cmd_top(const TopArgs& a) {
  install_stop_handlers();
  const milliseconds interval(a.interval_ms);
  Watch watch(a);
  if (!watch.sample()) return kExitFailure;
  if (a.once) {
    sleep_unless_stopped(interval);
    if (!watch.sample()) return kExitFailure;
    const std::vector<Row> rows = watch.rows();
    std::fputs((a.json ? sample_json(rows, a) + "\n" : screen(rows, a)).c_str(), stdout);
    return std::fflush(stdout) == 0 ? kExitOk : kExitFailure;
  }
  const bool tty = ::isatty(1) == 1;
  for (bool first = true; !stop_requested(); first = false) {
    if (!first && !watch.sample()) return kExitFailure;
    const std::vector<Row> rows = watch.rows();
    std::string out = a.json ? sample_json(rows, a) + "\n" : screen(rows, a);
    if (tty && !a.json) out = "\x1b[H\x1b[2J" + out;  // home, clear: redraw in place
    else if (!a.json) out += "\n";
    std::fputs(out.c_str(), stdout);
    if (std::fflush(stdout) != 0) return kExitFailure;
    sleep_unless_stopped(interval);
  }
  return kExitOk;
}

}  // namespace shmq::tool
