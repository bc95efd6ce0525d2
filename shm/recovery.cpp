// Recovery of a durable channel, and the checkpoints it reads.
//
// Contract. prepare_durable_segment() runs as the Segment::BeforeReady hook, under the segment's
// creation lock, before any process can attach: on a new journal it records the channel's
// geometry (the "meta" checkpoint); on an existing one it rebuilds the segment from the journal
// (records back at their positions from the lowest one a group still needed, group cursors and
// held messages, producers' ids, sequences and dedup windows). adopt_journal_geometry() makes a
// reopening process use the geometry the journal was written with. The checkpoint of groups and
// producers is encoded, decoded and captured here (shm/checkpoint_state.hpp); the journaler
// (shm/journaler.cpp) writes it. Everything read from the journal directory is checked before use;
// errors throw shmq::Error naming the channel, the path and the cause.
#include "shm/durability.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "journal/files.hpp"
#include "journal/journal.hpp"
#include "shm/channel_state.hpp"
#include "shm/checkpoint_state.hpp"
#include "shm/dedup.hpp"

namespace shmq::detail {
namespace {

using journal::RecordView;

// No position of a real channel comes near it; below it, a position plus a ring's worth never
// overflows. A checkpoint naming a position above it is refused.
constexpr std::uint64_t kMaxPosition = std::uint64_t{1} << 62;

[[noreturn]] void fail(std::string_view channel, std::errc code, const std::string& what) {
  throw Error(std::make_error_code(code), "shmq channel '" + std::string(channel) + "': " + what);
}

// --- a small binary encoding for checkpoints (little-endian, every read bounds-checked) -------
struct Out {
  std::string bytes;
  template <class T>
  void put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void str(std::string_view s) {
    put(static_cast<std::uint16_t>(s.size()));
    bytes.append(s);
  }
};
struct In {
  std::span<const std::byte> b;
  std::size_t at = 0;
  bool ok = true;
  template <class T>
  T get() {
    T v{};
    if (!ok || b.size() - at < sizeof v) {
      ok = false;
      return v;
    }
    std::memcpy(&v, b.data() + at, sizeof v);
    at += sizeof v;
    return v;
  }
  std::string str() {
    const auto n = get<std::uint16_t>();
    if (!ok || n > kMaxSlotName || b.size() - at < n) {
      ok = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(b.data() + at), n);
    at += n;
    return s;
  }
};

}  // namespace

std::string encode_state(const State& s) {
  Out o;
  o.put(kCheckpointVersion);
  o.put(s.durable_position);
  o.put(s.next_producer_id);
  o.put(static_cast<std::uint32_t>(s.producers.size()));
  for (const SavedProducer& p : s.producers) {
    o.str(p.name);
    o.put(p.id);
    o.put(p.next_seq);
    o.put(p.top);
    o.put(static_cast<std::uint32_t>(p.accepted.size()));
    for (const SeqRun& r : p.accepted) {
      o.put(r.first);
      o.put(r.count);
    }
  }
  o.put(static_cast<std::uint32_t>(s.groups.size()));
  for (const SavedGroup& g : s.groups) {
    o.str(g.name);
    o.put(g.start);
    o.put(g.next);
    o.put(static_cast<std::uint32_t>(g.held.size()));
    for (const Held& h : g.held) {
      o.put(h.position);
      o.put(h.deliveries);
    }
  }
  o.put(s.windows_from);
  return std::move(o.bytes);
}

State decode_state(std::string_view channel, const std::filesystem::path& dir, std::span<const std::byte> bytes) {
  In in{bytes};
  State s;
  const auto version = in.get<std::uint32_t>();
  if (in.ok && version != kCheckpointVersion && version != 1)
    fail(channel, std::errc::invalid_argument,
         (dir / kStateCheckpoint).string() + " is checkpoint version " + std::to_string(version) +
             "; this build reads versions 1 and " + std::to_string(kCheckpointVersion));
  s.durable_position = in.get<std::uint64_t>();
  s.next_producer_id = in.get<std::uint64_t>();
  const auto np = in.get<std::uint32_t>();
  for (std::uint32_t i = 0; in.ok && i < np && i < ring::kMaxClaimers; ++i) {
    SavedProducer p;
    p.name = in.str();
    p.id = in.get<std::uint64_t>();
    p.next_seq = in.get<std::uint64_t>();
    if (version >= 2) {
      p.top = in.get<std::uint64_t>();
      const auto runs = in.get<std::uint32_t>();
      for (std::uint32_t k = 0; in.ok && k < runs && k <= kMaxDedupWindow; ++k) {
        SeqRun r{};
        r.first = in.get<std::uint64_t>();
        r.count = in.get<std::uint32_t>();
        // Inside (top - window, top], within the sequences a producer may use.
        if (r.count == 0 || r.count > kMaxDedupWindow || r.first == 0 || r.first > p.top || p.top - r.first >= kMaxDedupWindow ||
            r.count - 1 > p.top - r.first)
          in.ok = false;
        p.accepted.push_back(r);
      }
      if (p.top > kMaxSeq || p.next_seq == 0) in.ok = false;
    } else if (p.next_seq > 1) {
      // Version 1 kept no window: every sequence below next_seq counted as accepted then, and
      // still does (the window's worth of them that can be told apart).
      p.top = std::min(p.next_seq - 1, kMaxSeq);
      const std::uint64_t first = p.top >= kMaxDedupWindow ? p.top - kMaxDedupWindow + 1 : 1;
      p.accepted.push_back({first, static_cast<std::uint32_t>(p.top - first + 1)});
    }
    s.producers.push_back(std::move(p));
  }
  const auto ng = in.get<std::uint32_t>();
  for (std::uint32_t i = 0; in.ok && i < ng && i < 4096; ++i) {
    SavedGroup g;
    g.name = in.str();
    g.start = in.get<std::uint32_t>();
    g.next = in.get<std::uint64_t>();
    const auto nh = in.get<std::uint32_t>();
    for (std::uint32_t k = 0; in.ok && k < nh && k < (1u << 20); ++k) {
      Held h{};
      h.position = in.get<std::uint64_t>();
      h.deliveries = in.get<std::uint32_t>();
      g.held.push_back(h);
    }
    s.groups.push_back(std::move(g));
  }
  if (version >= 2) s.windows_from = in.get<std::uint64_t>();
  if (!in.ok || in.at != bytes.size() || np > ring::kMaxClaimers || ng > 4096)
    fail(channel, std::errc::illegal_byte_sequence,
         (dir / kStateCheckpoint).string() + " passed its CRC but does not decode (written by another build?)");
  return s;
}

State capture_state(ChannelState& ch, std::uint64_t durable) {
  State s;
  s.durable_position = durable;
  s.next_producer_id = ch.header->next_producer_id.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < ch.options.max_producers; ++i) {
    ProducerSlot& p = ch.producers[i];
    if (p.state.load(std::memory_order_acquire) != kActive) continue;
    // A publish announced by an owner that died, and nobody took the name over: settle it now, so
    // that it neither holds windows_from (and so the journal) down for good, nor is forgotten.
    if (p.pending_entry.load(std::memory_order_acquire) != 0) {
      RegistryLock lock(ch);
      const std::uint64_t owner = p.owner.load(std::memory_order_acquire);
      if (owner == 0 || !token_alive(owner)) settle_dead_publish(ch, i);
    }
    // acquire: pairs with the release stores of the owner's begin() and accepted(): the window
    // entries of every publish finished before the one announced (or before none) are visible.
    const std::uint64_t pending = p.pending_entry.load(std::memory_order_acquire);
    if (pending != 0) s.windows_from = std::min(s.windows_from, pending - 1);
    SavedProducer sp{std::string(slot_name(p.name)), p.id, 1, 0, {}};
    // The accepted sequences whose records are durable (or were restored as accepted), against
    // one reading of the top. An entry taken over meanwhile by a newer sequence is left out: that
    // newer publish began after `durable` was read (this is the journaler's thread), so either its
    // record reaches the journal and a recovery puts the top past the one left out, or a retry of
    // that one may be accepted again (a duplicate, never a loss).
    const DedupWindow w = ch.segment->dedup_window(i);
    const std::uint64_t top = w.top();
    sp.next_seq = std::max(top + 1, p.reserved_seq.load(std::memory_order_relaxed));
    const std::uint64_t low = top >= w.size() ? top - w.size() + 1 : 1;
    for (std::uint64_t q = low; q != 0 && q <= top; ++q) {
      std::uint64_t position_plus1 = 0;
      if (!w.read_entry(q, &position_plus1) || (position_plus1 != 0 && position_plus1 - 1 >= durable)) continue;
      if (!sp.accepted.empty() && sp.accepted.back().first + sp.accepted.back().count == q)
        ++sp.accepted.back().count;
      else
        sp.accepted.push_back({q, 1});
      sp.top = q;
    }
    s.producers.push_back(std::move(sp));
  }
  for (std::uint32_t i = 0; i < ch.options.max_groups; ++i) {
    GroupSlot& g = ch.groups[i];
    if (g.state.load(std::memory_order_acquire) != kActive) continue;
    SavedGroup gs;
    gs.name = std::string(slot_name(g.name));
    gs.start = g.start;
    gs.next = g.next.load(std::memory_order_acquire);  // first, as in gate(): what is held after is below it
    ring::lock_owner_word(g.give_back_lock, self_token(), &ChannelState::alive);
    for (const GiveBackEntry& e : g.give_back)
      if (const std::uint64_t p = e.position_plus1.load(std::memory_order_relaxed))
        gs.held.push_back({p - 1, e.deliveries.load(std::memory_order_relaxed)});
    for (std::uint32_t c = 0; c < ch.options.max_consumers; ++c) {
      ConsumerSlot& slot = ch.consumers[c];
      if (slot.state.load(std::memory_order_acquire) != kActive || slot.group != i) continue;
      // Only what is below the cursor read above: an entry at or past it is a take not made yet
      // (tentative, its cursor store or CAS to come, or never: its consumer died), which the
      // cursor delivers again anyway, and which recovery would refuse as "held at or past next".
      for (std::uint32_t k = 0; k < kMaxInFlight; ++k)
        if (const std::uint64_t v = slot.in_flight[k].load(std::memory_order_seq_cst); v != 0 && held_position(v) < gs.next)
          gs.held.push_back({held_position(v), slot.deliveries[k].load(std::memory_order_relaxed)});
    }
    ring::unlock_owner_word(g.give_back_lock);
    std::sort(gs.held.begin(), gs.held.end(), [](const Held& a, const Held& b) { return a.position < b.position; });
    gs.held.erase(std::unique(gs.held.begin(), gs.held.end(),
                              [](const Held& a, const Held& b) { return a.position == b.position; }),
                  gs.held.end());
    s.groups.push_back(std::move(gs));
  }
  return s;
}

namespace {

std::string encode_meta(const ChannelOptions& o, std::uint64_t incarnation) {
  Out m;
  m.put(kMetaVersion);
  m.put(static_cast<std::uint64_t>(o.ring_bytes));
  m.put(static_cast<std::uint64_t>(o.max_message_bytes));
  m.put(o.max_producers);
  m.put(o.max_groups);
  m.put(o.max_consumers);
  m.put(o.dedup_window);
  m.put(o.max_deliveries);
  m.put(static_cast<std::uint32_t>(o.durability));
  m.put(incarnation);
  return std::move(m.bytes);
}

// The durability a meta checkpoint records (versions 1 and 2 both have it, after the geometry);
// Async when it does not read as Async or Sync.
Durability meta_durability(std::span<const std::byte> bytes) {
  In in{bytes};
  in.at = 4 + 8 + 8 + 5 * 4;  // version, ring_bytes, max_message_bytes, five u32 limits
  const auto d = in.get<std::uint32_t>();
  return in.ok && d == static_cast<std::uint32_t>(Durability::Sync) ? Durability::Sync : Durability::Async;
}

// The incarnation a meta checkpoint records (0 for version 1, which had none).
std::uint64_t meta_incarnation(std::span<const std::byte> bytes) {
  In in{bytes};
  if (in.get<std::uint32_t>() != 2) return 0;
  in.at = bytes.size() >= 8 ? bytes.size() - 8 : bytes.size();
  const auto v = in.get<std::uint64_t>();
  return in.ok ? v : 0;
}

// Recovery: per producer id, the (sequence, position) pairs of the journal's records among its
// WINDOW highest sequences. Sorted and cut down now and then, so its size stays within 2 x WINDOW.
class RecentSeqs {
 public:
  explicit RecentSeqs(std::uint32_t window) : window_(window) {}
  void add(std::uint64_t producer, std::uint64_t seq, std::uint64_t position) {
    auto& v = by_producer_[producer];
    v.emplace_back(seq, position);
    if (v.size() >= 2 * static_cast<std::size_t>(window_)) trim(v);
  }
  // Ascending by sequence, at most WINDOW of them.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> of(std::uint64_t producer) {
    const auto it = by_producer_.find(producer);
    if (it == by_producer_.end()) return {};
    trim(it->second);
    std::sort(it->second.begin(), it->second.end());
    return it->second;
  }

 private:
  void trim(std::vector<std::pair<std::uint64_t, std::uint64_t>>& v) const {
    if (v.size() <= window_) return;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() - window_), v.end());
    v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() - window_));
  }
  std::uint32_t window_;
  std::map<std::uint64_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>> by_producer_;
};

}  // namespace

void prepare(Segment& seg, RecoveryContext& rc);

std::filesystem::path journal_path_for(std::string_view name, const std::filesystem::path& journal_dir) {
  std::filesystem::path base = journal_dir;
  if (base.empty()) {
    const char* env = std::getenv("SHMQ_DIR");
    base = env && *env ? std::filesystem::path(env) : std::filesystem::path("shmq-data");
  }
  return std::filesystem::absolute(base).lexically_normal() / std::string(name);
}

void check_journal_dir(std::string_view channel, const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string why = err == ELOOP || err == ENOTDIR ? "is a symbolic link or not a directory: refused (a journal directory is never followed)"
                                                     : "cannot be opened";
    throw Error(std::error_code(err, std::generic_category()),
                "shmq channel '" + std::string(channel) + "': journal directory " + dir.string() + " " + why);
  }
  struct stat st{};
  const int rc = ::fstat(fd, &st);
  ::close(fd);
  if (rc != 0) throw Error(std::error_code(errno, std::generic_category()), "shmq channel '" + std::string(channel) + "': fstat of " + dir.string());
  if (st.st_uid != ::geteuid())
    fail(channel, std::errc::permission_denied,
         "journal directory " + dir.string() + " is owned by uid " + std::to_string(st.st_uid) + ", not by this process's uid " +
             std::to_string(::geteuid()) + ": refused (another user could read or replace the journal)");
}

void make_journal_dir(std::string_view channel, const std::filesystem::path& dir) {
  // Every missing component 0700 whatever the umask, each fsync'd into its parent (the first Sync
  // records need the path to survive a power cut); DIR itself is then checked: ours, not a symlink.
  if (std::distance(dir.begin(), dir.end()) > 256)
    fail(channel, std::errc::filename_too_long, "journal directory " + dir.string() + " is too deep");
  try {
    journal::detail::create_directories(dir);
  } catch (const Error& e) {
    throw Error(e.code(), "shmq channel '" + std::string(channel) + "': " + e.what());
  }
  check_journal_dir(channel, dir);
}

std::filesystem::path journal_dir_of(std::string_view channel, const SegmentHeader& h, const std::filesystem::path& asked) {
  // What the segment's creator wrote: only to name it in an error, or (attach) as the candidate.
  const char* end = static_cast<const char*>(std::memchr(h.journal_path, 0, sizeof h.journal_path));
  const std::string claimed(h.journal_path, end ? static_cast<std::size_t>(end - h.journal_path) : 0);
  std::filesystem::path dir = asked;
  if (dir.empty()) {
    const std::filesystem::path c(claimed);
    if (claimed.empty() || !c.is_absolute() || c.lexically_normal() != c || c.filename() != std::string(channel))
      fail(channel, std::errc::invalid_argument,
           "the segment's header names journal directory '" + claimed + "', which is not an absolute DIR/" + std::string(channel) +
               ": pass journal_dir (open) to name the journal");
    dir = c;
  }
  const std::string whose = asked.empty() ? "named by the segment's header" : "from this process's options";
  check_journal_dir(channel, dir);
  std::optional<std::vector<std::byte>> meta;
  try {
    meta = journal::read_checkpoint(dir, kMetaCheckpoint);
  } catch (const Error& e) {
    fail(channel, std::errc::invalid_argument, "journal directory " + dir.string() + " (" + whose + "): " + e.what());
  }
  if (!meta || meta_incarnation(*meta) != h.incarnation)
    fail(channel, std::errc::invalid_argument,
         "journal directory " + dir.string() + " (" + whose + ") is not this channel's journal (" +
             (meta ? "its meta names another incarnation" : "it has no meta") + "); the segment was made with journal directory '" +
             claimed + "': open the channel with the journal_dir it was made with");
  return dir;
}

void adopt_journal_geometry(std::string_view channel, const std::filesystem::path& dir, ChannelOptions& o) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return;
  const auto bytes = journal::read_checkpoint(dir, kMetaCheckpoint);
  if (!bytes) return;
  In in{*bytes};
  const auto version = in.get<std::uint32_t>();
  ChannelOptions j = o;
  j.ring_bytes = in.get<std::uint64_t>();
  j.max_message_bytes = in.get<std::uint64_t>();
  j.max_producers = in.get<std::uint32_t>();
  j.max_groups = in.get<std::uint32_t>();
  j.max_consumers = in.get<std::uint32_t>();
  j.dedup_window = in.get<std::uint32_t>();
  j.max_deliveries = in.get<std::uint32_t>();
  const auto durability = in.get<std::uint32_t>();
  if (version == 2) in.get<std::uint64_t>();  // the incarnation: prepare() takes it
  // Durability: the stronger of the journal's and the one asked (a Sync channel stays Sync after
  // a restart that asked Async; a restart may ask for more).
  if (in.ok && durability >= static_cast<std::uint32_t>(Durability::Async) && durability <= static_cast<std::uint32_t>(Durability::Sync))
    j.durability = std::max(o.durability, static_cast<Durability>(durability));
  if (!in.ok || (version != kMetaVersion && version != 1) || in.at != bytes->size())
    fail(channel, std::errc::illegal_byte_sequence, (dir / kMetaCheckpoint).string() + " does not decode");
  if (o.strict_geometry && (j.ring_bytes != o.ring_bytes || j.max_message_bytes != o.max_message_bytes))
    fail(channel, std::errc::invalid_argument,
         "the journal in " + dir.string() + " was written with ring_bytes " + std::to_string(j.ring_bytes) +
             " and max_message_bytes " + std::to_string(j.max_message_bytes) + "; other values were asked (strict_geometry)");
  o = j;
}

void prepare_durable_segment(Segment& seg, void* ctx) {
  auto& rc = *static_cast<RecoveryContext*>(ctx);
  try {
    prepare(seg, rc);
  } catch (const std::filesystem::filesystem_error& e) {
    throw Error(e.code(), "shmq channel '" + rc.name + "': journal directory " + rc.dir.string() + ": " + e.code().message());
  }
}

namespace {

// The pid holding an flock on the file with inode INO, from /proc/locks (0 if none is listed).
int flock_holder(ino_t ino) {
  std::FILE* f = std::fopen("/proc/locks", "re");
  if (!f) return 0;
  char line[256];
  int pid = 0;
  for (int n = 0; n < 100000 && std::fgets(line, sizeof line, f); ++n) {  // bounded: a file of our own
    char type[16], kind[16], mode[16];
    int p = 0;
    unsigned major = 0, minor = 0;
    unsigned long long inode = 0;
    if (std::sscanf(line, "%*d: %15s %15s %15s %d %x:%x:%llu", type, kind, mode, &p, &major, &minor, &inode) == 7 &&
        std::strcmp(type, "FLOCK") == 0 && inode == static_cast<unsigned long long>(ino)) {
      pid = p;
      break;
    }
  }
  std::fclose(f);
  return pid;
}

// DIR/LOCK, the journaler's election flock, held for the whole recovery: while it reads the
// journal and rebuilds the segment, nobody appends to it (a process that still has a removed
// segment mapped may be its journaler: it notices within milliseconds, finishes and lets go).
class JournalLock {
 public:
  explicit JournalLock(const RecoveryContext& rc) {
    const std::string path = (rc.dir / "LOCK").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, static_cast<mode_t>(rc.options.mode & 0777u));
    if (fd_ < 0)
      throw Error(std::error_code(errno, std::generic_category()), "shmq channel '" + rc.name + "': cannot open " + path);
    const std::uint64_t deadline =
        now_ns() + static_cast<std::uint64_t>(std::max<std::int64_t>(
                       std::chrono::duration_cast<std::chrono::nanoseconds>(rc.options.journal_lock_timeout).count(), 0));
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err != EWOULDBLOCK || now_ns() >= deadline) {
        struct stat st{};
        const int holder = ::fstat(fd_, &st) == 0 ? flock_holder(st.st_ino) : 0;
        ::close(fd_);
        throw Error(std::error_code(err, std::generic_category()),
                    "shmq channel '" + rc.name + "': cannot rebuild the segment from the journal " + rc.dir.string() +
                        ": its LOCK is held by " + (holder ? "pid " + std::to_string(holder) : std::string("another process")) +
                        " (a journaler of a removed segment of this channel?) for more than " +
                        std::to_string(rc.options.journal_lock_timeout.count()) + " ms");
      }
      ::usleep(2000);
    }
  }
  ~JournalLock() { ::close(fd_); }  // frees the flock
  JournalLock(const JournalLock&) = delete;
  JournalLock& operator=(const JournalLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace

void prepare(Segment& seg, RecoveryContext& rc) {
  make_journal_dir(rc.name, rc.dir);  // 0700, not a symlink, ours (11.12)
  const JournalLock journal_lock(rc);  // one journal, one writer (10.3)
  const auto meta = journal::read_checkpoint(rc.dir, kMetaCheckpoint);
  SegmentHeader& h = seg.header();
  if (!meta) {  // a new journal: the segment's fresh incarnation becomes the channel's
    const std::string m = encode_meta(rc.options, h.incarnation);
    journal::write_checkpoint(rc.dir, kMetaCheckpoint, std::as_bytes(std::span(m.data(), m.size())), rc.options.mode);
  } else {
    h.incarnation = meta_incarnation(*meta);  // the same channel, rebuilt: its inner ids go on
    // Reopened with a stronger durability than the journal records (Async -> Sync): record it,
    // so that the next rebuild (a reboot, `shmq recover` without --durability) keeps it.
    if (meta_durability(*meta) < rc.options.durability) {
      const std::string m = encode_meta(rc.options, h.incarnation);
      journal::write_checkpoint(rc.dir, kMetaCheckpoint, std::as_bytes(std::span(m.data(), m.size())), rc.options.mode);
    }
  }
  ring::RecordRing& ring = seg.ring();
  const std::uint64_t cap = ring.capacity();

  // The state checkpoint: the newest version, else the one before it, else none (the journal
  // alone). A version is refused when it is damaged, does not decode, or names positions the
  // journal contradicts (checked after the scan below).
  struct Candidate {
    std::string file;
    State state;
  };
  std::vector<Candidate> candidates;
  std::string problems;
  const auto note = [&](const std::string& why) { problems += (problems.empty() ? "" : "; ") + why; };
  for (auto& v : journal::read_checkpoint_versions(rc.dir, kStateCheckpoint)) {
    if (!v.exists) continue;
    if (!v.bytes) {
      note(v.problem);
      continue;
    }
    try {
      candidates.push_back({v.file, decode_state(rc.name, rc.dir / v.file, *v.bytes)});
    } catch (const Error& e) {
      note(v.file + ": " + e.what());
    }
  }

  // Pass 1: where the journal ends in ring terms, and the producers' highest sequences; and for
  // the positions the checkpoints name, whether each is a record's start or inside a record.
  // With no group known, what the ring can hold below the end is put back: scan from there.
  // Producers' windows: from the durable position of the checkpoint (what it did not see), or
  // lower where a publish was under way when it was taken.
  const auto scan_from_of = [&](const State* st) {
    if (!st) return std::uint64_t{0};
    const std::uint64_t d = std::min(st->durable_position, kMaxPosition);
    return std::min(st->groups.empty() ? (d > cap ? d - cap : 0) : std::min(d, st->low_water_mark(~0ull)), st->windows_from);
  };
  std::vector<std::uint64_t> named;  // positions the checkpoints name, sorted
  for (const Candidate& c : candidates)
    for (const SavedGroup& g : c.state.groups) {
      named.push_back(g.next);
      for (const Held& held : g.held) named.push_back(held.position);
    }
  std::sort(named.begin(), named.end());
  named.erase(std::unique(named.begin(), named.end()), named.end());
  std::vector<bool> named_start(named.size()), named_inside(named.size());

  std::uint64_t journal_end = 0;  // the end of the last record, in ring terms
  std::uint64_t first_record = ~0ull;
  std::map<std::uint64_t, std::uint64_t> max_seq;
  RecentSeqs recent(rc.options.dedup_window);  // per producer id, the sequences the journal holds near its top
  std::uint64_t max_id = 0;
  journal::ReadReport scan_report;
  const auto scan = [&](std::uint64_t from_position) {
    journal_end = 0;
    first_record = ~0ull;
    max_seq.clear();
    recent = RecentSeqs(rc.options.dedup_window);
    max_id = 0;
    std::fill(named_start.begin(), named_start.end(), false);
    std::fill(named_inside.begin(), named_inside.end(), false);
    std::size_t k = 0;  // the first named position not below the records read so far
    journal::Reader r = journal::Reader::open(rc.dir, from_position);
    RecordView v;
    while (r.next(v)) {
      // A ring record starts at a multiple of 8; a journal record (CRC and all) that says otherwise
      // names no ring position, and the ring would be rebuilt from a misaligned tail.
      if (v.position % ring::kAlign != 0)
        fail(rc.name, std::errc::illegal_byte_sequence,
             "the journal record at position " + std::to_string(v.position) + " in " + rc.dir.string() +
                 " is not at a ring record boundary (a multiple of " + std::to_string(ring::kAlign) + ")");
      const std::uint64_t record_end = v.position + ring::align_up(ring::kHeaderBytes + v.key.size() + v.payload.size());
      while (k < named.size() && named[k] < v.position) ++k;
      if (k < named.size() && named[k] == v.position) named_start[k++] = true;
      while (k < named.size() && named[k] < record_end) named_inside[k++] = true;
      first_record = std::min(first_record, v.position);
      journal_end = std::max(journal_end, record_end);
      max_seq[v.producer] = std::max(max_seq[v.producer], v.seq);
      recent.add(v.producer, v.seq, v.position);
      max_id = std::max(max_id, v.producer);
    }
    scan_report = r.report();
  };
  std::uint64_t scanned_from = ~0ull;
  for (const Candidate& c : candidates) scanned_from = std::min(scanned_from, scan_from_of(&c.state));
  // A ring's worth lower: a record that starts below a named position and spans it is seen.
  scanned_from = candidates.empty() ? 0 : scanned_from > cap ? scanned_from - cap : 0;
  scan(scanned_from);

  // Every field of a checkpoint, against bounds of our own and what the journal holds. A CRC says
  // who wrote the bytes, not that they are sane; "" when they are.
  const auto found = [&](const std::vector<bool>& flags, std::uint64_t position) {
    const auto it = std::lower_bound(named.begin(), named.end(), position);
    return it != named.end() && *it == position && flags[static_cast<std::size_t>(it - named.begin())];
  };
  const auto insane = [&](const State& st) -> std::string {
    const auto position_ok = [](std::uint64_t p) { return p % ring::kAlign == 0 && p <= kMaxPosition; };
    if (!position_ok(st.durable_position))
      return "durable_position " + std::to_string(st.durable_position) + " is not an aligned position";
    if (st.durable_position > journal_end + cap)
      return "durable_position " + std::to_string(st.durable_position) + " is more than a ring beyond the journal's end " +
             std::to_string(journal_end);
    if (st.windows_from != ~0ull && (!position_ok(st.windows_from) || st.windows_from > st.durable_position + cap))
      return "windows_from " + std::to_string(st.windows_from) + " is not an aligned position near the durable one";
    if (st.next_producer_id > kMaxPosition)
      return "next_producer_id " + std::to_string(st.next_producer_id) + " is beyond any id handed out";
    if (st.producers.size() > seg.geometry().max_producers)
      return std::to_string(st.producers.size()) + " producers, the channel has " + std::to_string(seg.geometry().max_producers) + " slots";
    if (st.groups.size() > seg.geometry().max_groups)
      return std::to_string(st.groups.size()) + " groups, the channel has " + std::to_string(seg.geometry().max_groups) + " slots";
    for (std::size_t i = 0; i < st.producers.size(); ++i) {
      const SavedProducer& p = st.producers[i];
      const std::string what = "producers[" + std::to_string(i) + "] ('" + p.name + "')";
      if (p.name.empty() || p.id == 0 || p.id > kMaxPosition) return what + ": no name, or id " + std::to_string(p.id);
      for (std::size_t j = 0; j < i; ++j)
        if (st.producers[j].id == p.id || st.producers[j].name == p.name) return what + ": id or name used twice";
      if (p.next_seq == 0 || p.next_seq > kMaxSeq + 1) return what + ": next_seq " + std::to_string(p.next_seq);
    }
    for (std::size_t i = 0; i < st.groups.size(); ++i) {
      const SavedGroup& g = st.groups[i];
      const std::string what = "groups[" + std::to_string(i) + "] ('" + g.name + "')";
      if (g.name.empty()) return what + ": no name";
      for (std::size_t j = 0; j < i; ++j)
        if (st.groups[j].name == g.name) return what + ": name used twice";
      if (g.start > static_cast<std::uint32_t>(Start::Latest)) return what + ": start " + std::to_string(g.start);
      if (!position_ok(g.next) || g.next > st.durable_position + cap)
        return what + ": next " + std::to_string(g.next) + " is not an aligned position within a ring of the durable one";
      if (found(named_inside, g.next))
        return what + ": next " + std::to_string(g.next) + " is inside a journal record, not at a record boundary";
      for (const Held& held : g.held) {
        if (!position_ok(held.position) || held.position >= g.next)
          return what + ": held position " + std::to_string(held.position) + " is not an aligned position below next";
        if (found(named_inside, held.position))
          return what + ": held position " + std::to_string(held.position) + " is inside a journal record";
        // Not a record but within the journal's records: no record was ever there.
        if (!found(named_start, held.position) && first_record != ~0ull && held.position >= first_record && held.position < journal_end)
          return what + ": held position " + std::to_string(held.position) + " is not a record of the journal";
      }
    }
    return "";
  };
  std::optional<State> state;
  for (Candidate& c : candidates) {
    if (const std::string why = insane(c.state); !why.empty()) {
      note(c.file + " refused: " + why);
      continue;
    }
    rc.report.checkpoint = c.file;
    state = std::move(c.state);
    break;
  }
  rc.report.checkpoint_problems = problems;
  if (!state && scanned_from != 0) scan(0);  // the journal alone: all of it
  const std::uint64_t end = std::max(journal_end, state ? state->durable_position : 0);

  // Durable records the journal no longer holds: loss, reported (the rest is recovered). The
  // mark is then set to what is left, so that the next recovery does not report it again.
  rc.report.torn_bytes = scan_report.torn_bytes;
  rc.report.torn_what = scan_report.torn_what;
  if (scan_report.lost_from) {
    rc.report.lost_from = scan_report.lost_from;
    rc.report.lost_to = scan_report.durable_mark.value_or(0);
    rc.report.lost_what = scan_report.lost_what;
    journal::record_durable_mark(rc.dir, scan_report.end_position, rc.options.mode);
  }
  if (!state && first_record == ~0ull) {  // a new journal (or every file gone): nothing to put back
    rc.report.recovered = rc.report.lost_from.has_value();
    return;
  }

  // Pass 2: back into the ring, at their positions, from the lowest one a group still needs (or
  // as much of the end as the ring holds: what lies below was acked before the crash, or the ring
  // could not have moved on past it). When no group is known, as much of the journal as the ring
  // holds goes back, for groups that start at the earliest message.
  const std::uint64_t need = state && !state->groups.empty() ? std::min(state->low_water_mark(end), end) : std::min(first_record, end);
  // A ring holds a whole capacity below its tail (a claim may end at cleaned + capacity: the
  // frame words at and past the tail are not read, so no gap is kept), and so does this one.
  const std::uint64_t from = std::max(need, end > cap ? end - cap : 0);
  ring.start(from);
  {
    journal::Reader r = journal::Reader::open(rc.dir, from);
    RecordView v;
    while (r.next(v)) {
      const auto frame_len = static_cast<std::uint32_t>(ring::kHeaderBytes + v.key.size() + v.payload.size());
      ring::RecordHeader* rec = ring.place(v.position, frame_len);
      if (!rec)
        fail(rc.name, std::errc::illegal_byte_sequence,
             "the journal record at position " + std::to_string(v.position) + " in " + rc.dir.string() +
                 " does not fit the channel's ring of " + std::to_string(cap) + " bytes (journal of another geometry?)");
      rec->producer = v.producer;
      rec->seq = v.seq;
      rec->timestamp_ns = v.timestamp_ns;
      rec->key_len = static_cast<std::uint32_t>(v.key.size());
      rec->reserved = 0;
      auto* body = reinterpret_cast<std::byte*>(rec) + ring::kHeaderBytes;
      if (!v.key.empty()) std::memcpy(body, v.key.data(), v.key.size());
      if (!v.payload.empty()) std::memcpy(body + v.key.size(), v.payload.data(), v.payload.size());
      ring.commit(v.position, frame_len, ring::RecordType::Data, 0);
      ++rc.report.records;
    }
  }
  // Up to the end (a padding or dead claim may follow the last record). Never start() again
  // here: the records just placed sit below it and must stay gated.
  if (ring.tail() < end && !ring.pad_to(end))
    fail(rc.name, std::errc::illegal_byte_sequence,
         "the journal in " + rc.dir.string() + " ends at position " + std::to_string(end) +
             ", beyond what a ring of this size can hold after position " + std::to_string(from));
  h.durable_position.store(end, std::memory_order_relaxed);
  rc.report.recovered = true;
  rc.report.from_position = from;
  rc.report.end_position = end;

  // Producers keep their ids. Their windows: what the checkpoint knew was accepted and durable,
  // and what the journal holds after it; the top is the highest of those. A sequence the journal
  // lost (Async, a host crash) is in neither: its retry is accepted again, which is right, since no
  // copy of it is left. Default sequences go on above anything a lost record may have used: at
  // most a ring's worth of records was not journaled, so a ring's worth of sequences is skipped.
  const std::uint64_t lost_at_most = cap / ring::kHeaderBytes;
  std::uint64_t next_id = std::max(state ? state->next_producer_id : 0, max_id);
  if (state) {
    for (std::size_t i = 0; i < state->producers.size() && i < seg.geometry().max_producers; ++i) {
      const SavedProducer& p = state->producers[i];
      ProducerSlot& slot = seg.producers()[i];
      set_slot_name(slot.name, p.name);
      slot.id = p.id;
      const auto it = max_seq.find(p.id);
      const std::uint64_t top = std::min(std::max(p.top, it == max_seq.end() ? 0 : it->second), kMaxSeq);
      DedupWindow w = seg.dedup_window(static_cast<std::uint32_t>(i));
      w.reset(top);
      for (const SeqRun& r : p.accepted)
        for (std::uint64_t k = 0; k < r.count; ++k) w.accept(r.first + k, 0);
      for (const auto& [seq, position] : recent.of(p.id))
        if (valid_seq(seq)) w.accept(seq, position + 1);
      const std::uint64_t reserved = std::max(p.next_seq, top + 1);
      slot.reserved_seq.store(reserved > kMaxSeq - lost_at_most ? kMaxSeq : reserved + lost_at_most, std::memory_order_relaxed);
      slot.pending_entry.store(0, std::memory_order_relaxed);
      slot.state.store(kActive, std::memory_order_relaxed);
      next_id = std::max(next_id, p.id);
      ++rc.report.producers;
    }
    // Groups: cursors back; what was held or given back is delivered again, lowest first.
    for (std::size_t i = 0; i < state->groups.size() && i < seg.geometry().max_groups; ++i) {
      const SavedGroup& gs = state->groups[i];
      GroupSlot& g = seg.groups()[i];
      set_slot_name(g.name, gs.name);
      g.start = gs.start;
      g.created_position = from;
      std::uint64_t next = std::clamp(gs.next, from, end);
      std::uint32_t n = 0;
      for (const Held& held : gs.held) {
        if (held.position >= next) continue;  // the cursor delivers it again
        // Only records that were put back: one beyond the journal's end (lost) or below what the
        // ring holds is not given back (it would name no record), but counted and reported.
        if (held.position < from || !found(named_start, held.position)) {
          if (rc.report.dropped_held++ == 0)
            rc.report.dropped_what = "group '" + gs.name + "': held message at position " + std::to_string(held.position) +
                                     (held.position < from ? " is below the records put back (from " + std::to_string(from) + ")"
                                                           : " is not in the journal (it ends at " + std::to_string(journal_end) + ")");
          continue;
        }
        if (n == kGiveBackEntries) {  // more than the list holds: deliver again from here on
          next = held.position;
          break;
        }
        GiveBackEntry& e = g.give_back[n++];
        e.deliveries.store(held.deliveries, std::memory_order_relaxed);
        e.position_plus1.store(held.position + 1, std::memory_order_relaxed);
      }
      g.given_back.store(n, std::memory_order_relaxed);
      std::uint64_t low = ~0ull;  // the list's low word (ChannelState::cheap_gate())
      for (std::uint32_t e = 0; e < n; ++e) low = std::min(low, g.give_back[e].position_plus1.load(std::memory_order_relaxed) - 1);
      g.list_low.store(low, std::memory_order_relaxed);
      g.next.store(next, std::memory_order_relaxed);
      g.state.store(kActive, std::memory_order_relaxed);
      rc.report.redelivered += n;
      ++rc.report.groups;
    }
  }
  h.next_producer_id.store(next_id, std::memory_order_relaxed);
}

}  // namespace shmq::detail
