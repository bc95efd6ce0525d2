#include "shm/segment.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/statfs.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <vector>
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
// std::system_error appends the errno text to what(): the message does not add it again.
[[noreturn]] void fail_errno(int err, std::string_view channel, const std::string& what) {
  throw Error(std::error_code(err, std::generic_category()), "shmq channel '" + std::string(channel) + "': " + what);
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

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels answer EINVAL
#endif

// --- Huge pages ---------------------------------------------------------------------------------
// A huge-page segment is a file on hugetlbfs, not on /dev/shm's tmpfs: hugetlbfs takes its pages
// from the pool the administrator reserved (vm.nr_hugepages) and reserves them for a shared
// mapping when it is mapped, so a short pool is an ENOMEM from mmap, never a SIGBUS later. (A
// tmpfs mounted with huge= gives transparent huge pages instead: best effort, falling back to
// 4 KiB pages without a word when memory is fragmented, and /dev/shm would have to be remounted
// for every user of it; not what a caller who asked for huge pages can rely on.)

// The huge page size of the file system FD lives on; 0 when it is not hugetlbfs.
std::uint64_t huge_page_of(int fd) noexcept {
  struct statfs fs{};
  if (::fstatfs(fd, &fs) != 0 || static_cast<unsigned long>(fs.f_type) != HUGETLBFS_MAGIC) return 0;
  return static_cast<std::uint64_t>(fs.f_bsize);
}
std::uint64_t huge_page_of_dir(const std::string& dir) noexcept {
  struct statfs fs{};
  if (::statfs(dir.c_str(), &fs) != 0 || static_cast<unsigned long>(fs.f_type) != HUGETLBFS_MAGIC) return 0;
  return static_cast<std::uint64_t>(fs.f_bsize);
}

// The figures of /proc/meminfo a huge-page error quotes: HugePages_Total, _Free, _Rsvd, and the
// default huge page size in bytes (0 when the kernel has no huge pages at all).
struct HugePool {
  std::uint64_t total = 0, free = 0, reserved = 0, page_bytes = 0;
  std::uint64_t available() const { return free > reserved ? free - reserved : 0; }
  std::string describe() const {
    return "/proc/meminfo: HugePages_Total " + std::to_string(total) + ", HugePages_Free " + std::to_string(free) +
           ", HugePages_Rsvd " + std::to_string(reserved) + ", Hugepagesize " + std::to_string(page_bytes >> 10) + " kB";
  }
};
HugePool huge_pool(std::uint64_t page_bytes) {
  HugePool p;
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t value = 0;
  for (int n = 0; n < 200 && in >> key >> value; ++n) {  // "Key: value [kB]"
    if (key == "HugePages_Total:") p.total = value;
    else if (key == "HugePages_Free:") p.free = value;
    else if (key == "HugePages_Rsvd:") p.reserved = value;
    else if (key == "Hugepagesize:") p.page_bytes = value << 10;
    in.ignore(256, '\n');
  }
  if (page_bytes != 0 && page_bytes != p.page_bytes) {
    // A mount of another page size (pagesize=1G): its own pool, in sysfs.
    const std::string dir = "/sys/kernel/mm/hugepages/hugepages-" + std::to_string(page_bytes >> 10) + "kB/";
    auto read = [&](const char* f) {
      std::uint64_t v = 0;
      std::ifstream(dir + f) >> v;
      return v;
    };
    p.total = read("nr_hugepages");
    p.free = read("free_hugepages");
    p.reserved = read("resv_hugepages");
    p.page_bytes = page_bytes;
  }
  return p;
}

// Where a huge-page segment is made: /dev/hugepages when it is hugetlbfs (systemd mounts it
// there), else the first hugetlbfs mount of /proc/self/mountinfo of the default huge page size,
// else the first of any size. Empty when there is none.
struct HugeMount {
  std::string dir;
  std::uint64_t page_bytes = 0;
};
HugeMount find_huge_mount() {
  if (const std::uint64_t page = huge_page_of_dir("/dev/hugepages")) return {"/dev/hugepages", page};
  std::vector<HugeMount> found;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  // mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS] - FSTYPE SOURCE SUPEROPTIONS"
  for (int n = 0; n < 100000 && std::getline(in, line); ++n) {
    const auto dash = line.find(" - ");
    if (dash == std::string::npos || line.compare(dash + 3, 10, "hugetlbfs ") != 0) continue;
    std::istringstream head(line.substr(0, dash));
    std::string id, parent, dev, root, mount_point;
    if (!(head >> id >> parent >> dev >> root >> mount_point)) continue;
    std::string dir;  // mountinfo writes ' ', '\t', '\n', '\\' as \ooo
    for (std::size_t i = 0; i < mount_point.size(); ++i) {
      auto octal_digit = [&](std::size_t k) { return k < mount_point.size() && mount_point[k] >= '0' && mount_point[k] <= '7'; };
      if (mount_point[i] == '\\' && octal_digit(i + 1) && octal_digit(i + 2) && octal_digit(i + 3)) {
        dir += static_cast<char>((mount_point[i + 1] - '0') * 64 + (mount_point[i + 2] - '0') * 8 + (mount_point[i + 3] - '0'));
        i += 3;
      } else {
        dir += mount_point[i];
      }
    }
    if (const std::uint64_t page = huge_page_of_dir(dir)) found.push_back({dir, page});
  }
  const std::uint64_t default_page = huge_pool(0).page_bytes;
  for (const HugeMount& h : found)
    if (h.page_bytes == default_page) return h;
  return found.empty() ? HugeMount{} : found.front();
}

// What the hugetlbfs mount holding FILE allows when it was mounted with a size= limit (its own
// share of the pool); empty when it has none.
std::string huge_mount_limit(const std::string& file) {
  const std::string dir = file.substr(0, file.find_last_of('/'));
  struct statfs fs{};
  if (::statfs(dir.c_str(), &fs) != 0 || fs.f_blocks == 0 || fs.f_blocks == static_cast<decltype(fs.f_blocks)>(-1)) return {};
  return "; the mount at " + dir + " allows " + std::to_string(fs.f_blocks) + " huge pages (its size= option), " +
         std::to_string(fs.f_bfree) + " of them free";
}

// Whether TARGET, what the link at /dev/shm/shmq.NAME names, is where a huge-page segment of NAME
// may live: an absolute path to shmq.NAME in a hugetlbfs directory.
bool plausible_huge_file(std::string_view name, const std::string& target) {
  const std::string leaf = "/shmq." + std::string(name);
  if (target.empty() || target[0] != '/' || target.size() <= leaf.size() ||
      target.compare(target.size() - leaf.size(), leaf.size(), leaf) != 0)
    return false;
  return huge_page_of_dir(target.substr(0, target.size() - leaf.size())) != 0;
}

// What the symbolic link at PATH names (empty: not a link, or unreadable).
std::string read_link(const std::string& path) {
  char buf[4096];
  const ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  if (n <= 0 || static_cast<std::size_t>(n) >= sizeof buf) return {};
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

int remove_segment(std::string_view name) noexcept {
  try {
    const std::string path = segment_path(name);
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0) return errno;
    if (S_ISLNK(st.st_mode)) {
      // A huge-page segment: its file first (a link that names anything else is only unlinked).
      const std::string target = read_link(path);
      if (plausible_huge_file(name, target) && ::unlink(target.c_str()) != 0 && errno != ENOENT) return errno;
    }
    return ::unlink(path.c_str()) == 0 ? 0 : errno;
  } catch (...) {
    return ENOMEM;
  }
}

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
      sizeof(ring::RingHeader), offsetof(ring::RingHeader, tail), offsetof(ring::RingHeader, cleaned), offsetof(ring::RingHeader, clean_lock), offsetof(ring::ClaimerSlot, claim_frame),
      offsetof(ring::RingHeader, data_seq), offsetof(ring::RingHeader, space_seq), sizeof(ring::ClaimerSlot),
      sizeof(ring::RecordHeader), ring::kRingVersion, offsetof(ProducerSlot, exclusive), offsetof(ConsumerSlot, exclusive),
      offsetof(ConsumerSlot, visibility_timeout_ns), offsetof(ConsumerSlot, take_from), offsetof(ConsumerSlot, take_entry),
      offsetof(ConsumerSlot, low_held), offsetof(GroupSlot, list_low), offsetof(GroupSlot, moves)};
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
  std::uint64_t huge_page = 0;  // the file's huge page size (hugetlbfs), 0 for /dev/shm's tmpfs

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
  // Maps the first N bytes of the file read-write, shared; returns 0 or an errno. On hugetlbfs,
  // N is rounded up to whole huge pages, which the kernel reserves here for the mapping (ENOMEM
  // when the pool has too few).
  int map(std::size_t n) noexcept {
    unmap();
    if (huge_page) n = static_cast<std::size_t>(round_up(n, huge_page));
#if defined(SHMQ_CRASH_POINTS)
    if (g_guard_pages && !huge_page) {  // (a hugetlbfs mapping must sit on a huge page boundary)
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
// the copy (never the live header again); returns what is wrong, or empty. HUGE_PAGE: the file's
// huge page size (from fstatfs, never from the segment), to which a hugetlbfs file is rounded up.
std::string validate(const SegmentHeader* h, std::uint64_t file_bytes, std::uint64_t huge_page, Geometry& g) {
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
  if (file_bytes != (huge_page ? round_up(l.total, huge_page) : l.total))
    return "segment file is " + std::to_string(file_bytes) + " bytes, its header says " + std::to_string(l.total) +
           (huge_page ? " (rounded up to whole huge pages of " + std::to_string(huge_page) + " bytes)" : std::string());
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

// Faults in every page of [ADDRESS, ADDRESS + BYTES) into this process's page tables (allocating
// those that are not allocated yet). Returns 0 or an errno (ENOMEM; EFAULT where an access would
// have raised SIGBUS). CREATOR (a new segment, nothing written yet): MADV_POPULATE_WRITE, or on a
// kernel without it (before 5.14) a write of 0 to each page. An opener: MADV_POPULATE_READ, or a
// read of each page, which never changes what a peer wrote; a read fault on a shared tmpfs or
// hugetlbfs mapping maps the page writable (neither tracks dirty pages through write faults),
// and maps its neighbours too (fault-around): 22-30 ms for a 64 MiB segment where
// MADV_POPULATE_WRITE took 84-87 ms, with no fault on the writes after it either (the first-lap
// test of tests/prefault_test.cpp counts them).
int populate(void* address, std::size_t bytes, bool creator) noexcept {
  constexpr int kPopulateRead = 22;  // MADV_POPULATE_READ, Linux 5.14
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (::madvise(address, bytes, creator ? MADV_POPULATE_WRITE : kPopulateRead) == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EINVAL) return errno;
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    auto* p = static_cast<volatile char*>(address);
    for (std::size_t off = 0; off < bytes; off += page) {
      if (creator) p[off] = 0;
      else (void)p[off];
    }
    return 0;
  }
  return EINTR;
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
  const std::string path = segment_path(name);  // the channel's name, in /dev/shm
  std::string file = path;                      // the segment's file: PATH, or the huge-page file PATH links to
  std::unique_ptr<Segment> seg(new Segment());
  seg->mapping_ = std::make_unique<Mapping>();
  Mapping& m = *seg->mapping_;
  const mode_t mode = static_cast<mode_t>(options.mode & 0777);
  bool made_here = false;  // this call created the file (O_EXCL)
  bool made_link = false;  // this call created the link at PATH (huge pages)
  // Leaves nothing behind of a creation that failed before Ready: the file, then the name.
  auto undo = [&] {
    if (file != path) ::unlink(file.c_str());
    ::unlink(path.c_str());
  };
  struct stat existing{};
  // huge_pages is the creator's choice: a channel that exists is opened wherever it lives.
  if (create && options.huge_pages && ::lstat(path.c_str(), &existing) != 0) {
    // The name is taken by symlink(2) (atomic, EEXIST when taken), the file made in hugetlbfs below.
    const HugeMount hm = find_huge_mount();
    if (hm.dir.empty()) {
      const HugePool pool = huge_pool(0);
      fail(std::errc::no_such_device, name,
           "huge_pages: no hugetlbfs file system is mounted (none at /dev/hugepages nor in /proc/self/mountinfo; " +
               pool.describe() +
               "): mount one (`mount -t hugetlbfs none /dev/hugepages`, which systemd's dev-hugepages.mount does at boot) "
               "and reserve huge pages (`sysctl vm.nr_hugepages=N`), or open without huge_pages");
    }
    if (options.ring_bytes % hm.page_bytes != 0)
      fail(std::errc::invalid_argument, name,
           "huge_pages: ring_bytes " + std::to_string(options.ring_bytes) + " is not a multiple of the huge page size of " +
               hm.dir + " (" + std::to_string(hm.page_bytes) + " bytes): use a ring of at least " +
               std::to_string(hm.page_bytes) + " bytes");
    file = hm.dir + "/shmq." + std::string(name);
    if (::symlink(file.c_str(), path.c_str()) == 0) {
      made_link = true;
      SHMQ_CRASH_POINT("segment.after_name_link");
    } else if (errno != EEXIST) {
      fail_errno(errno, name, "cannot make " + path + " (a link to the huge-page segment " + file + ")");
    } else {
      file = path;  // the name is taken: whatever it is, it is opened below as any opener opens it
    }
  }
  // Creation: O_CREAT|O_EXCL, so that a file somebody else made first is never taken for ours;
  // O_NOFOLLOW everywhere: a symbolic link at the path is refused, never followed, unless it is
  // the link of a huge-page segment that this uid made (follow_link below).
  if (create && !options.huge_pages) {  // (huge pages: never a plain file in its place)
    m.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (m.fd_ >= 0) {
      made_here = true;
      // The requested mode, whatever the umask says (as shm_open callers expect of a shared file).
      if (::fchmod(m.fd_, mode) != 0) {
        const int err = errno;
        ::unlink(path.c_str());
        fail_errno(err, name, "cannot set the mode of " + path);
      }
      SHMQ_CRASH_POINT("segment.after_create");
    } else if (errno != EEXIST) {
      fail_errno(errno, name, "cannot create " + path);
    }
  }
  if (m.fd_ < 0 && !made_link) {
    m.fd_ = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (m.fd_ < 0) {
      const int err = errno;
      if (err == ENOENT) {
        if (create) return nullptr;  // removed between our two opens: start again
        fail(std::errc::no_such_file_or_directory, name, "no such channel (" + path + " does not exist)");
      }
      if (err != ELOOP) fail_errno(err, name, "cannot open " + path);
      // A symbolic link: followed only when it is a huge-page segment's, and this uid's.
      struct stat link{};
      if (::lstat(path.c_str(), &link) != 0) {
        if (create) return nullptr;  // removed meanwhile: start again
        fail(std::errc::no_such_file_or_directory, name, "no such channel (" + path + " was removed)");
      }
      const std::string target = read_link(path);
      if (!S_ISLNK(link.st_mode) || !plausible_huge_file(name, target))
        fail(std::errc::too_many_symbolic_link_levels, name,
             path + " is a symbolic link" + (target.empty() ? std::string() : " to " + target) +
                 ", not to shmq." + std::string(name) + " in a hugetlbfs mount: refused (never followed)");
      if (link.st_uid != ::geteuid() && !options.allow_foreign_segment)
        fail(std::errc::permission_denied, name,
             path + " (a link to " + target + ") is owned by uid " + std::to_string(link.st_uid) +
                 ", not by this process's uid " + std::to_string(::geteuid()) +
                 ": refused (ChannelOptions::allow_foreign_segment accepts it)");
      file = target;
    }
  }
  if (m.fd_ < 0) {
    // The huge-page file that the link at PATH names. A creator makes it if it is not there (the
    // link's maker may have died before it did).
    if (create) {
      m.fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
      if (m.fd_ >= 0) {
        made_here = true;
        if (::fchmod(m.fd_, mode) != 0) {
          const int err = errno;
          undo();
          fail_errno(err, name, "cannot set the mode of " + file);
        }
      } else if (errno != EEXIST) {
        const int err = errno;
        if (made_link) ::unlink(path.c_str());
        fail_errno(err, name, "cannot create the huge-page segment " + file + " (" + path + " links to it)");
      }
    }
    if (m.fd_ < 0) m.fd_ = ::open(file.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (m.fd_ < 0) {
      const int err = errno;
      if (err == ENOENT)
        fail(std::errc::no_such_file_or_directory, name,
             "no such channel (" + path + " links to " + file + ", which does not exist: its creator died before making it, or it was removed)");
      fail_errno(err, name, "cannot open " + file + " (" + path + " links to it)");
    }
  }
  m.huge_page = huge_page_of(m.fd());
  FileLock lock(m.fd(), name);

  struct stat st{};
  if (::fstat(m.fd(), &st) != 0) fail_errno(errno, name, "cannot stat " + file);
  if (!S_ISREG(st.st_mode)) fail(std::errc::invalid_argument, name, file + " is not a regular file");
  if (!made_here) check_owner_and_mode(name, file, st, options, create);
  auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  struct stat now{};
  // Still the file the name resolves to (a link: followed, as when it was opened).
  if ((file == path ? ::lstat(path.c_str(), &now) : ::stat(path.c_str(), &now)) != 0 || now.st_ino != st.st_ino ||
      now.st_dev != st.st_dev) {
    if (!create) fail(std::errc::no_such_file_or_directory, name, "no such channel (" + path + " was removed)");
    return nullptr;  // unlinked while we waited for its lock: start again
  }

  bool init = false;
  if (file_bytes == 0) {
    // New (its creator has not taken the lock yet), or its creator died before sizing it. Only a
    // creator initialises it: an attacher must not make a channel with default options.
    if (!create) fail(std::errc::no_such_file_or_directory, name, file + " is being created, or its creator died");
    init = true;
  } else if (file_bytes < sizeof(SegmentHeader)) {
    fail(std::errc::invalid_argument, name, file + " is not a shmq segment (" + std::to_string(file_bytes) + " bytes, too short for a header)");
  } else {
    if (const int err = m.map(file_bytes)) fail_errno(err, name, "cannot map " + file);
    auto* h = static_cast<SegmentHeader*>(m.address);
    if (std::memcmp(h->magic, kMagicBytes, sizeof h->magic) == 0) {
      // acquire: pairs with the release store of Ready in initialize().
      const std::uint32_t state = h->init_state.load(std::memory_order_acquire);
      if (state == kInitializing) init = true;  // the creator died half-way (we hold the lock)
      else if (state != kReady) fail(std::errc::invalid_argument, name, file + " has a header in an unknown init state");
    } else if (all_zero(h, sizeof(SegmentHeader))) {
      init = true;  // sized, then its creator died before writing anything
    } else {
      fail(std::errc::invalid_argument, name, file + " is not a shmq segment (its magic is not SHMQSEG1)");
    }
    if (init && !create) fail(std::errc::no_such_file_or_directory, name, file + " was never fully created");
  }

  if (init) {
    const Layout l = layout_for(options.ring_bytes, options.max_producers, options.max_groups, options.max_consumers,
                                options.dedup_window);
    const std::uint64_t huge = m.huge_page;
    const std::uint64_t bytes = huge ? round_up(l.total, huge) : l.total;  // hugetlbfs sizes in whole huge pages
    const std::string size_text = std::to_string(bytes) + " bytes (" + std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB)";
    auto huge_short = [&](int err) {
      const HugePool pool = huge_pool(huge);
      undo();
      fail_errno(err, name,
                 "huge_pages: " + file + " cannot have the segment's " + size_text + ", " + std::to_string(bytes / huge) +
                     " huge pages of " + std::to_string(huge >> 10) + " kB, with " + std::to_string(pool.available()) +
                     " free and not reserved (" + pool.describe() + huge_mount_limit(file) +
                     "): reserve more (`sysctl vm.nr_hugepages=" +
                     std::to_string(pool.total + bytes / huge - std::min(pool.available(), bytes / huge)) + "`), or open without huge_pages");
    };
    if (huge && options.ring_bytes % huge != 0) {
      undo();
      fail(std::errc::invalid_argument, name,
           "huge_pages: ring_bytes " + std::to_string(options.ring_bytes) + " is not a multiple of the huge page size of " +
               file + " (" + std::to_string(huge) + " bytes)");
    }
    m.unmap();
    // Fresh zeroed pages: shrink to 0 first so that a half-written earlier attempt leaves nothing.
    if (::ftruncate(m.fd(), 0) != 0 || ::ftruncate(m.fd(), static_cast<off_t>(bytes)) != 0) {
      const int err = errno;
      undo();
      fail_errno(err, name, "cannot size " + file + " to " + std::to_string(bytes) + " bytes");
    }
    if (options.prefault) {
      // Allocate every page now, where a shortage is an errno (ENOSPC: the tmpfs is full; ENOMEM:
      // a memory cgroup), rather than a SIGBUS at the first touch of a page that cannot be had.
      if (::fallocate(m.fd(), 0, 0, static_cast<off_t>(bytes)) != 0 && errno != EOPNOTSUPP) {
        const int err = errno;
        if (huge) huge_short(err);
        undo();
        fail_errno(err, name,
                   "cannot pre-fault " + file + ": its " + size_text +
                       " cannot be allocated (the size limit of the tmpfs at /dev/shm, see `df /dev/shm`, or a memory "
                       "cgroup limit; a smaller ring_bytes needs less)");
      }
    }
    if (const int err = m.map(bytes)) {
      if (huge && (err == ENOMEM || err == ENOSPC)) huge_short(err);
      undo();
      fail_errno(err, name, "cannot map " + file);
    }
    if (options.prefault) {
      // Every page into this process's page tables, before anything is written: all zero, so the
      // fallback for old kernels may write a zero to each.
      if (const int err = populate(m.address, m.bytes, true)) {
        undo();
        fail_errno(err, name,
                   "cannot pre-fault the " + size_text + " of " + file +
                       (err == EFAULT ? ": its pages cannot all be had (a touch would raise SIGBUS: the file system is full, or a memory cgroup limit)"
                                      : std::string()));
      }
      SHMQ_CRASH_POINT("segment.after_prefault");
    }
    auto* h = static_cast<SegmentHeader*>(m.address);
    initialize(h, l, options);
    file_bytes = bytes;
    seg->created_ = true;
    if (before_ready) {
      seg->header_ = h;
      Geometry g;
      if (std::string why = validate(h, file_bytes, huge, g); !why.empty()) fail(std::errc::invalid_argument, name, file + ": " + why);
      seg->adopt(g);
      try {
        before_ready(*seg, ctx);
      } catch (...) {
        undo();  // never Ready, and nobody may attach to it: leave nothing behind
        throw;
      }
    }
    // release: everything above is visible to whoever reads Ready (acquire below, in another opener).
    h->init_state.store(kReady, std::memory_order_release);
  }
  seg->header_ = static_cast<SegmentHeader*>(m.address);
  if (m.bytes < file_bytes) fail(std::errc::io_error, name, "mapping of " + file + " is shorter than the file");
  Geometry g;
  if (std::string why = validate(seg->header_, file_bytes, m.huge_page, g); !why.empty())
    fail(std::errc::invalid_argument, name, file + ": " + why);
  seg->adopt(g);
  if (options.prefault && !init) {
    // An opener's own page tables: the pages are there (or are allocated now); no fault later.
    if (const int err = populate(m.address, m.bytes, false))
      fail_errno(err, name,
                 "cannot pre-fault this process's mapping of " + file + " (" + std::to_string(m.bytes) + " bytes)" +
                     (err == EFAULT ? ": its creator did not pre-fault it and its pages cannot all be had now (a touch would "
                                      "raise SIGBUS: the file system is full, or a memory cgroup limit)"
                                    : std::string()));
  }
  return seg;
}

}  // namespace shmq::detail
