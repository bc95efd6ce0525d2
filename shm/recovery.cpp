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

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "journal/journal.hpp"
#include "shm/channel_state.hpp"
#include "shm/checkpoint_state.hpp"
#include "shm/dedup.hpp"

namespace shmq::detail {
namespace {

using journal::RecordView;

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
      for (std::uint32_t k = 0; k < kMaxInFlight; ++k)
        if (const std::uint64_t v = slot.in_flight[k].load(std::memory_order_seq_cst))
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

void prepare(Segment& seg, RecoveryContext& rc) {
  journal::create_journal_directories(rc.dir);  // each new directory's parent fsync'd
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

  std::optional<State> state;
  if (auto bytes = journal::read_checkpoint(rc.dir, kStateCheckpoint)) state = decode_state(rc.name, rc.dir, *bytes);

  // Pass 1: where the journal ends in ring terms, and the producers' highest sequences.
  // With no group known, what the ring can hold below the end is put back: scan from there.
  // Producers' windows: from the durable position of the checkpoint (what it did not see), or
  // lower where a publish was under way when it was taken.
  const std::uint64_t scan_from = std::min(
      !state ? 0
      : state->groups.empty() ? (state->durable_position > cap ? state->durable_position - cap : 0)
                              : std::min(state->durable_position, state->low_water_mark(~0ull)),
      state ? state->windows_from : 0);
  std::uint64_t end = state ? state->durable_position : 0;
  std::uint64_t first_record = ~0ull;
  std::map<std::uint64_t, std::uint64_t> max_seq;
  RecentSeqs recent(rc.options.dedup_window);  // per producer id, the sequences the journal holds near its top
  std::uint64_t max_id = 0;
  journal::ReadReport scan_report;
  {
    journal::Reader r = journal::Reader::open(rc.dir, scan_from);
    RecordView v;
    while (r.next(v)) {
      first_record = std::min(first_record, v.position);
      end = std::max(end, v.position + ring::align_up(ring::kHeaderBytes + v.key.size() + v.payload.size()));
      max_seq[v.producer] = std::max(max_seq[v.producer], v.seq);
      recent.add(v.producer, v.seq, v.position);
      max_id = std::max(max_id, v.producer);
    }
    scan_report = r.report();
  }
  rc.report.torn_bytes = scan_report.torn_bytes;
  rc.report.torn_what = scan_report.torn_what;
  if (!state && first_record == ~0ull) return;  // a new journal: nothing to recover

  // Pass 2: back into the ring, at their positions, from the lowest one a group still needs (or
  // as much of the end as the ring holds: what lies below was acked before the crash, or the ring
  // could not have moved on past it). When no group is known, as much of the journal as the ring
  // holds goes back, for groups that start at the earliest message.
  const std::uint64_t need = state && !state->groups.empty() ? state->low_water_mark(end) : std::min(first_record, end);
  const std::uint64_t from = std::max(need, end > cap - ring::kAlign ? end - cap + ring::kAlign : 0);
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
    for (std::size_t i = 0; i < state->producers.size() && i < h.max_producers; ++i) {
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
    for (std::size_t i = 0; i < state->groups.size() && i < h.max_groups; ++i) {
      const SavedGroup& gs = state->groups[i];
      GroupSlot& g = seg.groups()[i];
      set_slot_name(g.name, gs.name);
      g.start = gs.start;
      g.created_position = from;
      std::uint64_t next = std::clamp(gs.next, from, end);
      std::uint32_t n = 0;
      for (const Held& held : gs.held) {
        if (held.position < from || held.position >= next) continue;
        if (n == kGiveBackEntries) {  // more than the list holds: deliver again from here on
          next = held.position;
          break;
        }
        GiveBackEntry& e = g.give_back[n++];
        e.deliveries.store(held.deliveries, std::memory_order_relaxed);
        e.position_plus1.store(held.position + 1, std::memory_order_relaxed);
      }
      g.given_back.store(n, std::memory_order_relaxed);
      g.next.store(next, std::memory_order_relaxed);
      g.state.store(kActive, std::memory_order_relaxed);
      rc.report.redelivered += n;
      ++rc.report.groups;
    }
  }
  h.next_producer_id.store(next_id, std::memory_order_relaxed);
}

}  // namespace shmq::detail
