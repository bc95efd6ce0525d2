// dump, verify, recover, journal: the subcommands over a channel's journal.
//
//   dump     decodes the records (journal::Reader: every CRC checked), text or JSON lines
//   verify   journal::verify, with a progress bar on a terminal, and every checkpoint version (state,
//            meta and their .prev: framing, CRC, decoding); exit 1 naming the first bad position, for
//            durable records lost (the journal ends below its durable mark), or for a damaged checkpoint
//   recover  Channel::open of a channel whose segment is gone: rebuilt from the journal; the report
//   journal  the standalone journaler: holds the channel open (its Journaler thread competes for the
//            journal's LOCK) until SIGINT/SIGTERM
#include <unistd.h>

#include <algorithm>
#include <array>
#include <vector>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <shmq/shmq.hpp>
#include <string>

#include "journal/journal.hpp"
#include "shm/checkpoint_state.hpp"
#include "shm/durability.hpp"
#include "tools/commands.hpp"
#include "tools/output.hpp"

namespace shmq::tool {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string text_of(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::string optional_json(const std::optional<std::uint64_t>& v) { return v ? std::to_string(*v) : "null"; }

// Segment files (*.log) of DIR and their total size, for the progress bar.
std::pair<std::uint64_t, std::uint64_t> journal_files(const fs::path& dir) {
  std::uint64_t files = 0, bytes = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".log") continue;
    std::error_code size_ec;
    const auto size = e.file_size(size_ec);
    ++files;
    if (!size_ec) bytes += size;
  }
  return {files, bytes};
}

// One stored checkpoint version, as verify sees it.
struct CheckpointFinding {
  std::string file;
  bool ok;
  std::string what;  // "" when ok
};

// Every version of the state and meta checkpoints in DIR: whole (magic, length, CRC) and, for the
// state, decoding. Recovery validates their positions against the journal and falls back from a
// bad one (to the previous version, then to the journal alone); verify reports them.
std::vector<CheckpointFinding> check_checkpoints(const fs::path& dir) {
  std::vector<CheckpointFinding> out;
  for (const std::string_view name : {detail::kStateCheckpoint, detail::kMetaCheckpoint}) {
    std::array<journal::CheckpointVersion, 2> versions;
    try {
      versions = journal::read_checkpoint_versions(dir, name);
    } catch (const Error& e) {
      out.push_back({std::string(name), false, e.what()});
      continue;
    }
    for (const auto& v : versions) {
      if (!v.exists) continue;
      if (!v.bytes) {
        out.push_back({v.file, false, v.problem});
        continue;
      }
      if (name == detail::kStateCheckpoint) {
        try {
          (void)detail::decode_state(dir.filename().string(), dir / v.file, *v.bytes);
        } catch (const Error& e) {
          out.push_back({v.file, false, e.what()});
          continue;
        }
      }
      out.push_back({v.file, true, ""});
    }
  }
  return out;
}

}  // namespace

// ---- dump ----------------------------------------------------------------------------------------

int cmd_dump(const DumpArgs& a) {
  const std::optional<fs::path> dir = find_journal("dump", a.target, a.journal_dir);
  if (!dir) return kExitFailure;
  journal::Reader reader = journal::Reader::open(*dir, a.from.value_or(0));
  journal::RecordView r;
  std::uint64_t shown = 0;
  std::optional<std::uint64_t> first, last;
  try {
    while ((!a.count || shown < *a.count) && reader.next(r)) {
      if (!first) first = r.position;
      last = r.position;
      ++shown;
      if (a.json) {
        const std::string line = JsonObject()
                                     .num("position", r.position)
                                     .num("producer", r.producer)
                                     .num("seq", r.seq)
                                     .num("timestamp_ns", r.timestamp_ns)
                                     .str("key", text_of(r.key))
                                     .str("payload", text_of(r.payload))
                                     .num("payload_bytes", r.payload.size())
                                     .num("flags", r.flags)
                                     .done();
        std::printf("%s\n", line.c_str());
      } else {
        std::printf("position=%llu id=%llu:%llu time=%s flags=%u key=\"%s\" payload=\"%s\"\n",
                    static_cast<unsigned long long>(r.position), static_cast<unsigned long long>(r.producer),
                    static_cast<unsigned long long>(r.seq), utc_time(r.timestamp_ns).c_str(), r.flags,
                    printable(text_of(r.key)).c_str(), printable(text_of(r.payload)).c_str());
      }
    }
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "shmq dump: %s (%llu records shown before it; every position below %s is intact)\n", error_text(e).c_str(),
                 static_cast<unsigned long long>(shown),
                 reader.report().first_bad_position ? std::to_string(*reader.report().first_bad_position).c_str() : "it");
    return kExitFailure;
  }
  if (std::fflush(stdout) != 0) return kExitFailure;
  const journal::ReadReport& rep = reader.report();
  std::string range = shown ? ", positions " + std::to_string(*first) + " .. " + std::to_string(*last) : "";
  std::fprintf(stderr, "shmq dump: %llu records%s from %s%s\n", static_cast<unsigned long long>(shown), range.c_str(),
               dir->c_str(), a.count && shown == *a.count ? " (--count reached)" : "");
  if (rep.at_end && rep.torn_bytes > 0)
    std::fprintf(stderr, "shmq dump: note: a torn tail of %llu bytes ends the journal (%s); the journaler cuts it\n",
                 static_cast<unsigned long long>(rep.torn_bytes), rep.torn_what.c_str());
  if (rep.at_end && rep.lost_from) {
    std::fprintf(stderr, "shmq dump: durable records lost from position %llu: %s\n",
                 static_cast<unsigned long long>(*rep.lost_from), rep.lost_what.c_str());
    return kExitFailure;
  }
  return kExitOk;
}

// ---- verify --------------------------------------------------------------------------------------

namespace {

// A one-line progress bar on stderr, redrawn in place ("\r"); cleared by done().
class ProgressBar {
 public:
  ProgressBar(std::uint64_t files, std::uint64_t bytes) : files_(files), bytes_(bytes) {}

  void show(const journal::VerifyProgress& p) {
    constexpr int kWidth = 30;
    const double done = bytes_ ? std::min(1.0, static_cast<double>(p.bytes) / static_cast<double>(bytes_))
                               : (files_ ? static_cast<double>(p.files_done) / static_cast<double>(files_) : 1.0);
    const int filled = static_cast<int>(done * kWidth);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.append(static_cast<std::size_t>(kWidth - filled), '.');
    std::fprintf(stderr, "\r\x1b[Kverify [%s] %3d%%  file %llu/%llu %s  %llu records  %s", bar.c_str(),
                 static_cast<int>(done * 100), static_cast<unsigned long long>(std::min(p.files_done + 1, files_)),
                 static_cast<unsigned long long>(files_), p.file.c_str(), static_cast<unsigned long long>(p.records),
                 human_bytes(p.bytes).c_str());
    std::fflush(stderr);
    shown_ = true;
  }
  void done() {
    if (shown_) std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
  }

 private:
  std::uint64_t files_, bytes_;
  bool shown_ = false;
};

}  // namespace

int cmd_verify(const VerifyArgs& a) {
  const std::optional<fs::path> dir = find_journal("verify", a.target, a.journal_dir);
  if (!dir) return kExitFailure;
  const auto [files, bytes] = journal_files(*dir);
  ProgressBar bar(files, bytes);
  const bool tty = ::isatty(2) == 1;
  const auto t0 = Clock::now();
  journal::VerifyReport v = journal::verify(*dir, [&](const journal::VerifyProgress& p) {
    if (tty) bar.show(p);
  });
  // verify() keeps what() of the exception: drop the generic text of its error code.
  if (const std::string suffix = ": " + std::make_error_code(std::errc::illegal_byte_sequence).message();
      v.what.size() > suffix.size() && v.what.compare(v.what.size() - suffix.size(), suffix.size(), suffix) == 0)
    v.what.erase(v.what.size() - suffix.size());
  bar.done();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::vector<CheckpointFinding> checkpoints = check_checkpoints(*dir);
  bool checkpoints_ok = true;
  for (const auto& c : checkpoints) checkpoints_ok = checkpoints_ok && c.ok;

  if (a.json) {
    std::printf("%s\n", JsonObject()
                            .str("dir", dir->string())
                            .num("ok", v.ok)
                            .num("files", v.files)
                            .num("records", v.records)
                            .num("bytes", v.bytes)
                            .num("end_position", v.end_position)
                            .raw("first_bad_position", optional_json(v.first_bad_position))
                            .num("torn_bytes", v.torn_bytes)
                            .raw("durable_mark", optional_json(v.durable_mark))
                            .raw("lost_from", optional_json(v.lost_from))
                            .str("what", v.what)
                            .num("checkpoints_ok", checkpoints_ok)
                            .raw("checkpoints", [&] {
                              std::vector<std::string> items;
                              for (const auto& c : checkpoints)
                                items.push_back(JsonObject().str("file", c.file).num("ok", c.ok).str("what", c.what).done());
                              return json_array(items);
                            }())
                            .done()
                            .c_str());
  } else {
    std::printf("journal %s: %s\n", dir->c_str(), v.ok ? "ok" : "CORRUPT");
    std::printf("  %llu files, %llu records, %s (%llu bytes) read in %s s%s\n", static_cast<unsigned long long>(v.files),
                static_cast<unsigned long long>(v.records), human_bytes(v.bytes).c_str(),
                static_cast<unsigned long long>(v.bytes), fixed(secs, 2).c_str(), v.ok ? "" : " before the corruption");
    if (v.ok) std::printf("  end position %llu\n", static_cast<unsigned long long>(v.end_position));
    if (v.ok && v.torn_bytes > 0)
      std::printf("  %s (%llu bytes; the journaler cuts it at its next open)\n", v.what.c_str(),
                  static_cast<unsigned long long>(v.torn_bytes));
    for (const auto& c : checkpoints)
      std::printf("  checkpoint %s: %s\n", c.file.c_str(), c.ok ? "ok" : ("DAMAGED: " + c.what).c_str());
  }
  std::fflush(stdout);
  if (!checkpoints_ok)
    for (const auto& c : checkpoints)
      if (!c.ok)
        std::fprintf(stderr, "shmq verify: checkpoint %s is damaged (recovery falls back to the previous version, then to the journal alone): %s\n",
                     c.file.c_str(), c.what.c_str());
  if (!v.ok) {
    if (v.first_bad_position)
      std::fprintf(stderr, "shmq verify: corrupt at position %llu: %s\n",
                   static_cast<unsigned long long>(*v.first_bad_position), v.what.c_str());
    else
      std::fprintf(stderr, "shmq verify: %s\n", v.what.c_str());
    return kExitFailure;
  }
  return checkpoints_ok ? kExitOk : kExitFailure;
}

// ---- recover -------------------------------------------------------------------------------------

namespace {

void print_recovery(const Channel& ch, const RecoveryReport& r, bool json) {
  const ChannelOptions& o = ch.options();
  if (json) {
    std::printf("%s\n", JsonObject()
                            .str("channel", std::string(ch.name()))
                            .str("journal_dir", o.journal_dir.string())
                            .str("durability", durability_name(o.durability))
                            .num("recovered", r.recovered)
                            .num("records", r.records)
                            .num("from_position", r.from_position)
                            .num("end_position", r.end_position)
                            .num("groups", r.groups)
                            .num("producers", r.producers)
                            .num("redelivered", r.redelivered)
                            .num("torn_bytes", r.torn_bytes)
                            .str("torn_what", r.torn_what)
                            .str("checkpoint", r.checkpoint)
                            .str("checkpoint_problems", r.checkpoint_problems)
                            .raw("lost_from", optional_json(r.lost_from))
                            .num("lost_to", r.lost_to)
                            .str("lost_what", r.lost_what)
                            .num("dropped_held", r.dropped_held)
                            .str("dropped_what", r.dropped_what)
                            .done()
                            .c_str());
    return;
  }
  std::printf("channel %s rebuilt from its journal %s (Durability::%s)\n", std::string(ch.name()).c_str(),
              o.journal_dir.c_str(), durability_name(o.durability));
  Table t({"messages put back", std::to_string(r.records) + " (positions " + std::to_string(r.from_position) + " .. " +
                                    std::to_string(r.end_position) + ")"});
  t.add({"groups restored", std::to_string(r.groups)});
  t.add({"producers restored", std::to_string(r.producers) + " (ids and sequences go on)"});
  t.add({"to deliver again", std::to_string(r.redelivered) + " (held by consumers at the last checkpoint)"});
  t.add({"torn tail", r.torn_bytes ? std::to_string(r.torn_bytes) + " bytes: " + r.torn_what : std::string("none")});
  t.add({"checkpoint", !r.checkpoint.empty() ? r.checkpoint
                       : r.checkpoint_problems.empty()
                           ? std::string("none")
                           : std::string("none usable: rebuilt from the journal alone (groups and producer names unknown; at-least-once)")});
  if (!r.checkpoint_problems.empty()) t.add({"checkpoints refused", r.checkpoint_problems});
  if (r.lost_from)
    t.add({"LOST (corruption)", "durable records in positions " + std::to_string(*r.lost_from) + " .. " + std::to_string(r.lost_to) +
                                    ": " + r.lost_what});
  if (r.dropped_held) t.add({"held, not restored", std::to_string(r.dropped_held) + ": " + r.dropped_what});
  t.print(stdout, "  ");
}

// DIR holds a journal (segment files or checkpoints), not just an empty directory.
bool has_journal(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (e.path().extension() == ".log" || f == "meta" || f == "state") return true;
  }
  return false;
}

}  // namespace

int cmd_recover(const RecoverArgs& a) {
  const fs::path dir = detail::journal_path_for(a.channel, a.journal_dir);  // throws for a bad name
  if (Channel::exists(a.channel)) {
    Channel ch = Channel::attach(a.channel, /*run_journaler=*/false);
    const ChannelStats s = ch.stats();
    if (a.json) {
      print_recovery(ch, ch.recovery(), true);
    } else {
      std::printf("channel %s: its segment exists, nothing to recover (Durability::%s, %s, write position %llu)\n",
                  a.channel.c_str(), durability_name(s.durability),
                  s.journal_dir.empty() ? "no journal" : ("journal " + s.journal_dir).c_str(),
                  static_cast<unsigned long long>(s.write_position));
    }
    return kExitOk;
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || !has_journal(dir)) {
    std::fprintf(stderr, "shmq recover: channel '%s' has no segment and no journal at %s: nothing to recover from (--journal-dir DIR?)\n",
                 a.channel.c_str(), dir.c_str());
    return kExitFailure;
  }
  ChannelOptions o;
  o.durability = parse_durability(a.durability);
  o.journal_dir = a.journal_dir;
  std::optional<Channel> ch;
  try {
    ch = Channel::open(a.channel, o);
  } catch (const Error& e) {
    if (e.code() != std::errc::illegal_byte_sequence) throw;
    std::fprintf(stderr, "shmq recover: cannot rebuild channel '%s' from its journal %s: %s (shmq verify %s says where)\n",
                 a.channel.c_str(), dir.c_str(), error_text(e).c_str(), dir.c_str());
    return kExitFailure;
  }
  if (!ch->recovery().recovered) {
    // Another process made the segment between exists() and open(), or the journal held nothing.
    if (a.json) {
      print_recovery(*ch, ch->recovery(), true);
      return kExitOk;
    }
    std::printf("channel %s: %s\n", a.channel.c_str(),
                ch->recovery().end_position == 0 && ch->stats().write_position == 0
                    ? "the journal holds no message; the channel is open again, empty"
                    : "its segment was made meanwhile by another process; nothing recovered here");
    return kExitOk;
  }
  print_recovery(*ch, ch->recovery(), a.json);
  if (ch->recovery().lost_from) {
    std::fprintf(stderr, "shmq recover: channel '%s' rebuilt, but durable records are lost (positions %llu .. %llu): %s\n",
                 a.channel.c_str(), static_cast<unsigned long long>(*ch->recovery().lost_from),
                 static_cast<unsigned long long>(ch->recovery().lost_to), ch->recovery().lost_what.c_str());
    return kExitFailure;
  }
  return kExitOk;
}

// ---- journal -------------------------------------------------------------------------------------

int cmd_journal(const JournalArgs& a) {
  Channel ch = Channel::attach(a.channel);
  ChannelStats s = ch.stats();
  if (s.durability == Durability::Memory) {
    std::fprintf(stderr, "shmq journal: channel '%s' is a Memory channel: it has no journal to write\n", a.channel.c_str());
    return kExitFailure;
  }
  install_stop_handlers();
  const bool tty = ::isatty(1) == 1;
  const int me = ::getpid();
  std::printf("shmq journal: channel %s (Durability::%s), journal %s; pid %d; Ctrl-C or SIGTERM to stop\n",
              a.channel.c_str(), durability_name(s.durability), s.journal_dir.c_str(), me);
  std::fflush(stdout);
  int last_journaler = -1;
  auto last_line = Clock::now();
  std::uint64_t last_durable = s.durable_position;
  while (!stop_requested()) {
    s = ch.stats();
    if (s.journaler_pid != last_journaler) {
      if (s.journaler_pid == me)
        std::printf("journaler of %s now (durable position %llu)\n", a.channel.c_str(),
                    static_cast<unsigned long long>(s.durable_position));
      else if (s.journaler_pid != 0)
        std::printf("pid %d is the journaler of %s; standing by to take over when it exits\n", s.journaler_pid,
                    a.channel.c_str());
      else if (last_journaler == me)
        std::printf("no longer the journaler of %s\n", a.channel.c_str());
      std::fflush(stdout);
      last_journaler = s.journaler_pid;
    }
    const auto now = Clock::now();
    if (tty && now - last_line >= std::chrono::seconds(1)) {
      const double secs = std::chrono::duration<double>(now - last_line).count();
      const std::uint64_t moved = s.durable_position - std::min(last_durable, s.durable_position);
      std::printf("durable position %llu (+%s/s), write position %llu, %s not durable yet%s\n",
                  static_cast<unsigned long long>(s.durable_position),
                  human_bytes(static_cast<std::uint64_t>(static_cast<double>(moved) / secs)).c_str(),
                  static_cast<unsigned long long>(s.write_position),
                  human_bytes(s.write_position - std::min(s.durable_position, s.write_position)).c_str(),
                  s.journaler_pid == me ? "" : s.journaler_pid ? " (written by another process)" : " (no journaler)");
      std::fflush(stdout);
      last_line = now;
      last_durable = s.durable_position;
    }
    sleep_unless_stopped(milliseconds(100));
  }
  s = ch.stats();
  std::printf("shmq journal: stopping; durable position %llu of %llu\n", static_cast<unsigned long long>(s.durable_position),
              static_cast<unsigned long long>(s.write_position));
  std::fflush(stdout);
  return kExitOk;  // ~Channel stops the journaler: syncs, writes a checkpoint, frees the LOCK
}

}  // namespace shmq::tool
