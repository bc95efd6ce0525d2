#include "shm/segment.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <type_traits>
#include <thread>

#include "shm/crash_point.hpp"
#include "shm/process.hpp"

namespace shmq::detail {

namespace {

void (*g_init_hook)() = nullptr;
#if defined(SHMQ_CRASH_POINTS)
bool g_guard_pages = false;
#endif

[[noreturn]] void fail(std::errc code, std::string_view channel, const std::string& what) {
  throw Error(std::make_error_code(code), "shmq channel '" + std::string(channel) + "': " + what);
}
[[noreturn]] void fail_errno(int err, std::string_view channel, const std::string& what) {
  throw Error(std::error_code(err, std::generic_category()),
              "shmq channel '" + std::string(channel) + "': " + what + ": " + std::strerror(err));
}

bool name_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

struct Layout {
  std::uint64_t producers, groups, consumers, dedup, ring, total;
};

std::uint64_t round_up(std::uint64_t n, std::uint64_t to) { return (n + to - 1) / to * to; }

Layout layout_for(std::uint64_t ring_bytes, std::uint32_t producers, std::uint32_t groups, std::uint32_t consumers,
                  std::uint32_t dedup_window) {
  Layout l{};
  l.producers = round_up(sizeof(SegmentHeader), 4096);
  l.groups = round_up(l.producers + std::uint64_t(producers) * sizeof(ProducerSlot), 4096);
  l.consumers = round_up(l.groups + std::uint64_t(groups) * sizeof(GroupSlot), 4096);
  l.dedup = round_up(l.consumers + std::uint64_t(consumers) * sizeof(ConsumerSlot), 4096);
  l.ring = round_up(l.dedup + std::uint64_t(producers) * dedup_window * sizeof(DedupEntry), 4096);
  l.total = l.ring + ring::RecordRing::region_bytes(ring_bytes, producers);
  return l;
}

std::uint64_t max_frame_for(std::uint64_t max_message_bytes) {
  return ring::kHeaderBytes + max_key_bytes(max_message_bytes) + max_message_bytes;  // header, key, payload
}

}  // namespace

std::uint32_t layout_fingerprint() noexcept {
  const std::uint64_t facts[] = {
      sizeof(SegmentHeader), offsetof(SegmentHeader, init_state), offsetof(SegmentHeader, segment_bytes),
      offsetof(SegmentHeader, ring_offset), offsetof(SegmentHeader, registry_lock),
      offsetof(SegmentHeader, next_producer_id), sizeof(ProducerSlot), offsetof(ProducerSlot, name),
      offsetof(ProducerSlot, owner), offsetof(ProducerSlot, next_seq), sizeof(GroupSlot), offsetof(GroupSlot, next),
      offsetof(GroupSlot, delivered), offsetof(GroupSlot, generation), offsetof(GroupSlot, given_back), offsetof(GroupSlot, give_back),
      sizeof(GiveBackEntry), kGiveBackEntries, sizeof(ConsumerSlot), offsetof(ConsumerSlot, in_flight),
      offsetof(ConsumerSlot, deliveries), offsetof(ConsumerSlot, delivered_at), offsetof(ConsumerSlot, delivered), kMovingBit, kMaxInFlight, offsetof(SegmentHeader, last_reap_ns), offsetof(SegmentHeader, durable_position), offsetof(SegmentHeader, journal_path),
      offsetof(SegmentHeader, registry_version), offsetof(SegmentHeader, dedup_offset), offsetof(ProducerSlot, pending_seq),
      offsetof(ProducerSlot, pending_entry), offsetof(ProducerSlot, reserved_seq), offsetof(ring::ClaimerSlot, padded),
      sizeof(DedupEntry), offsetof(SegmentHeader, incarnation),
      sizeof(ring::RingHeader), offsetof(ring::RingHeader, tail), offsetof(ring::RingHeader, cleaned), offsetof(ring::RingHeader, cleaning_to),
      offsetof(ring::RingHeader, data_seq), offsetof(ring::RingHeader, space_seq), sizeof(ring::ClaimerSlot),
      sizeof(ring::RecordHeader), ring::kRingVersion};
  std::uint32_t h = 2166136261u;  // FNV-1a over the facts
  for (std::uint64_t f : facts) {
    for (int i = 0; i < 8; ++i) {
      h ^= static_cast<std::uint8_t>(f >> (8 * i));
      h *= 16777619u;
    }
  }
  return h;
}

void set_init_hook(void (*hook)()) { g_init_hook = hook; }

void check_channel_name(std::string_view name) {
  if (name.empty()) fail(std::errc::invalid_argument, name, "the channel name is empty");
  if (name.size() > kMaxChannelName)
    fail(std::errc::filename_too_long, name.substr(0, 40),
         "the channel name is " + std::to_string(name.size()) + " characters long; at most " +
             std::to_string(kMaxChannelName));
  if (name.front() == '.') fail(std::errc::invalid_argument, name, "a channel name may not start with '.'");
  if (name.find("..") != std::string_view::npos) fail(std::errc::invalid_argument, name, "a channel name may not contain '..'");
  for (char c : name)
    if (!name_char_ok(c))
      fail(std::errc::invalid_argument, name,
           std::string("the channel name contains '") + (c == '\0' ? std::string("\\0") : std::string(1, c)) +
               "'; allowed are letters, digits, '.', '_' and '-'");
}

void check_slot_name(std::string_view channel, std::string_view what, std::string_view name) {
  if (name.empty()) fail(std::errc::invalid_argument, channel, std::string(what) + " name is empty");
  if (name.size() > kMaxSlotName)
    fail(std::errc::invalid_argument, channel,
         std::string(what) + " name '" + std::string(name.substr(0, 40)) + "...' is longer than 63 characters");
  for (char c : name)
    if (!name_char_ok(c))
      fail(std::errc::invalid_argument, channel,
           std::string(what) + " name '" + std::string(name) + "' contains a character other than letters, digits, '.', '_', '-'");
}

std::string segment_path(std::string_view name) { return "/dev/shm/shmq." + std::string(name); }

// The segment file, opened with open(2) on /dev/shm (shm_open's semantics, with O_EXCL and
// O_NOFOLLOW, which Boost.Interprocess's shared_memory_object does not offer, nor a mapping of an
// fd it did not open), and its mapping.
struct Segment::Mapping {
  int fd_ = -1;
  void* address = nullptr;   // the mapping of the file
  std::size_t bytes = 0;
  void* reserved = nullptr;  // guard-page mode (tests): the PROT_NONE reservation around it
  std::size_t reserved_bytes = 0;

  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    unmap();
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  void unmap() noexcept {
    if (reserved) ::munmap(reserved, reserved_bytes);
    else if (address) ::munmap(address, bytes);
    address = reserved = nullptr;
    bytes = reserved_bytes = 0;
  }
  // Maps the first N bytes of the file read-write, shared; returns 0 or an errno.
  int map(std::size_t n) noexcept {
    unmap();
#if defined(SHMQ_CRASH_POINTS)
    if (g_guard_pages) {
      // A no-access page on either side: an access outside the segment dies with SIGSEGV.
      const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
      const std::size_t span = (n + page - 1) / page * page;
      void* r = ::mmap(nullptr, span + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (r == MAP_FAILED) return errno;
      void* a = ::mmap(static_cast<char*>(r) + page, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, 0);
      if (a == MAP_FAILED) {
        const int err = errno;
        ::munmap(r, span + 2 * page);
        return err;
      }
      reserved = r;
      reserved_bytes = span + 2 * page;
      address = a;
      bytes = n;
      return 0;
    }
#endif
    void* a = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (a == MAP_FAILED) return errno;
    address = a;
    bytes = n;
    return 0;
  }
};

#if defined(SHMQ_CRASH_POINTS)
void set_guard_pages(bool on) noexcept { g_guard_pages = on; }
#endif

Segment::~Segment() = default;

bool Segment::still_named(std::string_view name) const noexcept {
  struct stat mine{}, now{};
  if (!mapping_ || ::fstat(mapping_->fd(), &mine) != 0) return false;
  const std::string path = segment_path(name);
  return ::stat(path.c_str(), &now) == 0 && now.st_ino == mine.st_ino && now.st_dev == mine.st_dev;
}
DedupEntry* Segment::dedup_entries(std::uint32_t i) const noexcept {
  return dedup_ + std::uint64_t(i) * geometry_.dedup_window;
}
DedupWindow Segment::dedup_window(std::uint32_t i) const noexcept {
  return DedupWindow(dedup_entries(i), geometry_.dedup_window, &producers_[i].next_seq);
}

void Segment::adopt(const Geometry& g) {
  geometry_ = g;
  char* base = reinterpret_cast<char*>(header_);
  producers_ = reinterpret_cast<ProducerSlot*>(base + g.producers_offset);
  groups_ = reinterpret_cast<GroupSlot*>(base + g.groups_offset);
  consumers_ = reinterpret_cast<ConsumerSlot*>(base + g.consumers_offset);
  dedup_ = reinterpret_cast<DedupEntry*>(base + g.dedup_offset);
  ring_ = ring::RecordRing(base + g.ring_offset, g.ring_bytes, g.max_producers, max_frame_for(g.max_message_bytes));
}

namespace {

// Holds the flock of the segment file for the scope of a creation or an attach.
class FileLock {
 public:
  FileLock(int fd, std::string_view channel) : fd_(fd) {
    // Creation takes milliseconds; a creator alive but stuck for longer than this is reported.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) fail_errno(errno, channel, "cannot lock " + segment_path(channel));
      if (std::chrono::steady_clock::now() > deadline)
        fail(std::errc::timed_out, channel,
             "another live process has been initialising " + segment_path(channel) + " for more than 30 s");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  ~FileLock() { ::flock(fd_, LOCK_UN); }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_;
};

void initialize(SegmentHeader* h, const Layout& l, const ChannelOptions& o) {
  std::memcpy(h->magic, kMagicBytes, sizeof h->magic);
  h->layout_version = kLayoutVersion;
  h->fingerprint = layout_fingerprint();
  h->init_state.store(kInitializing, std::memory_order_relaxed);
  h->durability = static_cast<std::uint32_t>(o.durability);
  h->segment_bytes = l.total;
  h->ring_bytes = o.ring_bytes;
  h->max_message_bytes = o.max_message_bytes;
  h->max_producers = o.max_producers;
  h->max_groups = o.max_groups;
  h->max_consumers = o.max_consumers;
  h->dedup_window = o.dedup_window;
  h->max_deliveries = o.max_deliveries;
  h->producers_offset = l.producers;
  h->groups_offset = l.groups;
  h->consumers_offset = l.consumers;
  h->ring_offset = l.ring;
  h->dedup_offset = l.dedup;
  h->created_ns = wall_clock_ns();
  h->creator_token = self_token();
  std::random_device entropy;
  h->incarnation = (std::uint64_t{entropy()} << 32) ^ entropy() ^ h->created_ns;
  if (g_init_hook) g_init_hook();
  ring::RecordRing::initialize(reinterpret_cast<char*>(h) + l.ring, o.ring_bytes, o.max_producers,
                               max_frame_for(o.max_message_bytes));
  const std::string jp = o.journal_dir.string();
  std::memcpy(h->journal_path, jp.data(), std::min(jp.size(), sizeof h->journal_path - 1));
}

// Copies the geometry out of a header (each field read once) into G.
void copy_geometry(const SegmentHeader* h, Geometry& g) {
  // volatile reads: each field is read exactly once, whatever a peer writes meanwhile.
  auto once = [](const auto& field) { return *static_cast<const volatile std::remove_reference_t<decltype(field)>*>(&field); };
  g.durability = static_cast<Durability>(once(h->durability));
  g.segment_bytes = once(h->segment_bytes);
  g.ring_bytes = once(h->ring_bytes);
  g.max_message_bytes = once(h->max_message_bytes);
  g.max_producers = once(h->max_producers);
  g.max_groups = once(h->max_groups);
  g.max_consumers = once(h->max_consumers);
  g.dedup_window = once(h->dedup_window);
  g.max_deliveries = once(h->max_deliveries);
  g.producers_offset = once(h->producers_offset);
  g.groups_offset = once(h->groups_offset);
  g.consumers_offset = once(h->consumers_offset);
  g.ring_offset = once(h->ring_offset);
  g.dedup_offset = once(h->dedup_offset);
  char path[sizeof h->journal_path];
  for (std::size_t i = 0; i < sizeof path; ++i) path[i] = once(h->journal_path[i]);
  g.journal_path.assign(path, ::strnlen(path, sizeof path));
  if (g.journal_path.size() == sizeof path) g.journal_path.clear();  // not terminated: refused below
}

// Checks a Ready header against the file it came from: copies its geometry into G and validates
// the copy (never the live header again); returns what is wrong, or empty.
std::string validate(const SegmentHeader* h, std::uint64_t file_bytes, Geometry& g) {
  if (h->layout_version != kLayoutVersion)
    return "segment layout version is " + std::to_string(h->layout_version) + ", this build reads version " +
           std::to_string(kLayoutVersion);
  if (h->fingerprint != layout_fingerprint()) return "segment layout fingerprint differs from this build's (built with another layout)";
  copy_geometry(h, g);
  if (static_cast<std::uint32_t>(g.durability) > static_cast<std::uint32_t>(Durability::Sync)) return "segment header names an unknown durability";
  if (!std::has_single_bit(g.ring_bytes) || g.ring_bytes < (64u << 10) || g.ring_bytes > (1u << 30))
    return "segment header has a ring size that is not a power of two between 64 KiB and 1 GiB";
  if (g.max_message_bytes == 0 || g.max_message_bytes > g.ring_bytes / 4) return "segment header has an invalid max_message_bytes";
  if (g.max_producers == 0 || g.max_producers > ring::kMaxClaimers || g.max_groups == 0 || g.max_groups > 4096 ||
      g.max_consumers == 0 || g.max_consumers > 4096)
    return "segment header has table sizes out of range";
  if (!std::has_single_bit(g.dedup_window) || g.dedup_window > kMaxDedupWindow)
    return "segment header has a dedup window that is not a power of two up to " + std::to_string(kMaxDedupWindow);
  if (g.durability != Durability::Memory && g.journal_path.empty()) return "segment header's journal path is not terminated";
  if (g.durability != Durability::Memory && g.journal_path[0] != '/')
    return "segment header of a durable channel has no absolute journal path";
  const Layout l = layout_for(g.ring_bytes, g.max_producers, g.max_groups, g.max_consumers, g.dedup_window);
  if (g.producers_offset != l.producers || g.groups_offset != l.groups || g.consumers_offset != l.consumers ||
      g.dedup_offset != l.dedup || g.ring_offset != l.ring || g.segment_bytes != l.total)
    return "segment header offsets do not match its geometry";
  if (file_bytes != l.total)
    return "segment file is " + std::to_string(file_bytes) + " bytes, its header says " + std::to_string(l.total);
  const auto* region = reinterpret_cast<const char*>(h) + l.ring;
  if (const char* why = ring::RecordRing::validate(region, l.total - l.ring)) return why;
  auto* rh = reinterpret_cast<const ring::RingHeader*>(region);
  if (rh->capacity != g.ring_bytes || rh->claimers != g.max_producers || rh->max_frame != max_frame_for(g.max_message_bytes))
    return "ring header disagrees with the segment header";
  return {};
}

bool all_zero(const void* p, std::size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  return std::all_of(b, b + n, [](unsigned char c) { return c == 0; });
}

std::string octal(unsigned mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0%03o", mode & 07777);
  return buf;
}

// A segment file this call did not create is used only when this uid owns it, and, when this call
// may create (Channel::open, which knows the channel's mode), when its mode gives nobody more than
// OPTIONS.mode: otherwise whoever made it first (a squatter) could read or write every message.
// Attaching only (Channel::attach, which has no mode to compare with) checks the owner.
// OPTIONS.allow_foreign_segment opts out, for setups that share channels between uids on purpose.
void check_owner_and_mode(std::string_view name, const std::string& path, const struct stat& st,
                          const ChannelOptions& options, bool create) {
  if (options.allow_foreign_segment) return;
  const unsigned mode = static_cast<unsigned>(st.st_mode) & 07777;
  if (st.st_uid != ::geteuid())
    fail(std::errc::permission_denied, name,
         path + " is owned by uid " + std::to_string(st.st_uid) + " (mode " + octal(mode) + "), not by this process's uid " +
             std::to_string(::geteuid()) + ": refused (someone else made it; ChannelOptions::allow_foreign_segment accepts it)");
  if (create && (mode & ~(options.mode & 0777)))
    fail(std::errc::permission_denied, name,
         path + " (owner uid " + std::to_string(st.st_uid) + ") has mode " + octal(mode) +
             ", which allows more than the channel's mode " + octal(options.mode) +
             ": refused (ChannelOptions::allow_foreign_segment accepts it)");
}

}  // namespace

std::unique_ptr<Segment> Segment::open(std::string_view name, const ChannelOptions& options, bool create,
                                       BeforeReady before_ready, void* ctx) {
  // A creator whose preparation failed unlinks the segment; an opener that was waiting for the
  // lock on that file then holds a file nobody can find: it starts again (a few times at most).
  for (int attempt = 0;; ++attempt) {
    if (auto seg = open_once(name, options, create, before_ready, ctx); seg || attempt == 8) return seg;
  }
}

std::unique_ptr<Segment> Segment::open_once(std::string_view name, const ChannelOptions& options, bool create,
                                            BeforeReady before_ready, void* ctx) {
  const std::string path = segment_path(name);
  std::unique_ptr<Segment> seg(new Segment());
  seg->mapping_ = std::make_unique<Mapping>();
  Mapping& m = *seg->mapping_;
  // Creation: O_CREAT|O_EXCL, so that a file somebody else made first is never taken for ours;
  // O_NOFOLLOW everywhere: a symbolic link at the path is refused, never followed.
  bool made_here = false;
  if (create) {
    m.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, static_cast<mode_t>(options.mode & 0777));
    if (m.fd_ >= 0) {
      made_here = true;
      // The requested mode, whatever the umask says (as shm_open callers expect of a shared file).
      if (::fchmod(m.fd_, static_cast<mode_t>(options.mode & 0777)) != 0) {
        const int err = errno;
        ::unlink(path.c_str());
        fail_errno(err, name, "cannot set the mode of " + path);
      }
      SHMQ_CRASH_POINT("segment.after_create");
    } else if (errno != EEXIST) {
      fail_errno(errno, name, "cannot create " + path);
    }
  }
  if (m.fd_ < 0) {
    m.fd_ = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (m.fd_ < 0) {
      const int err = errno;
      if (err == ENOENT) {
        if (create) return nullptr;  // removed between our two opens: start again
        fail(std::errc::no_such_file_or_directory, name, "no such channel (" + path + " does not exist)");
      }
      if (err == ELOOP) fail(std::errc::too_many_symbolic_link_levels, name, path + " is a symbolic link: refused (never followed)");
      fail_errno(err, name, "cannot open " + path);
    }
  }
  FileLock lock(m.fd(), name);

  struct stat st{};
  if (::fstat(m.fd(), &st) != 0) fail_errno(errno, name, "cannot stat " + path);
  if (!S_ISREG(st.st_mode)) fail(std::errc::invalid_argument, name, path + " is not a regular file");
  if (!made_here) check_owner_and_mode(name, path, st, options, create);
  auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  struct stat now{};
  if (::lstat(path.c_str(), &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev) {
    if (!create) fail(std::errc::no_such_file_or_directory, name, "no such channel (" + path + " was removed)");
    return nullptr;  // unlinked while we waited for its lock: start again
  }

  bool init = false;
  if (file_bytes == 0) {
    // New (its creator has not taken the lock yet), or its creator died before sizing it. Only a
    // creator initialises it: an attacher must not make a channel with default options.
    if (!create) fail(std::errc::no_such_file_or_directory, name, path + " is being created, or its creator died");
    init = true;
  } else if (file_bytes < sizeof(SegmentHeader)) {
    fail(std::errc::invalid_argument, name, path + " is not a shmq segment (" + std::to_string(file_bytes) + " bytes, too short for a header)");
  } else {
    if (const int err = m.map(file_bytes)) fail_errno(err, name, "cannot map " + path);
    auto* h = static_cast<SegmentHeader*>(m.address);
    if (std::memcmp(h->magic, kMagicBytes, sizeof h->magic) == 0) {
      // acquire: pairs with the release store of Ready in initialize().
      const std::uint32_t state = h->init_state.load(std::memory_order_acquire);
      if (state == kInitializing) init = true;  // the creator died half-way (we hold the lock)
      else if (state != kReady) fail(std::errc::invalid_argument, name, path + " has a header in an unknown init state");
    } else if (all_zero(h, sizeof(SegmentHeader))) {
      init = true;  // sized, then its creator died before writing anything
    } else {
      fail(std::errc::invalid_argument, name, path + " is not a shmq segment (its magic is not SHMQSEG1)");
    }
    if (init && !create) fail(std::errc::no_such_file_or_directory, name, path + " was never fully created");
  }

  if (init) {
    const Layout l = layout_for(options.ring_bytes, options.max_producers, options.max_groups, options.max_consumers,
                                options.dedup_window);
    m.unmap();
    // Fresh zeroed pages: shrink to 0 first so that a half-written earlier attempt leaves nothing.
    if (::ftruncate(m.fd(), 0) != 0 || ::ftruncate(m.fd(), static_cast<off_t>(l.total)) != 0)
      fail_errno(errno, name, "cannot size " + path + " to " + std::to_string(l.total) + " bytes");
    if (const int err = m.map(l.total)) fail_errno(err, name, "cannot map " + path);
    auto* h = static_cast<SegmentHeader*>(m.address);
    initialize(h, l, options);
    file_bytes = l.total;
    seg->created_ = true;
    if (before_ready) {
      seg->header_ = h;
      Geometry g;
      if (std::string why = validate(h, file_bytes, g); !why.empty()) fail(std::errc::invalid_argument, name, path + ": " + why);
      seg->adopt(g);
      try {
        before_ready(*seg, ctx);
      } catch (...) {
        ::unlink(path.c_str());  // never Ready, and nobody may attach to it: leave nothing behind
        throw;
      }
    }
    // release: everything above is visible to whoever reads Ready (acquire below, in another opener).
    h->init_state.store(kReady, std::memory_order_release);
  }
  seg->header_ = static_cast<SegmentHeader*>(m.address);
  if (m.bytes < file_bytes) fail(std::errc::io_error, name, "mapping of " + path + " is shorter than the file");
  Geometry g;
  if (std::string why = validate(seg->header_, file_bytes, g); !why.empty()) fail(std::errc::invalid_argument, name, path + ": " + why);
  seg->adopt(g);
  return seg;
}

}  // namespace shmq::detail
