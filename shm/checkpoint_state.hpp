// Checkpoints of a channel's state, shared by the journaler (shm/journaler.cpp), which captures
// and writes them, and recovery (shm/recovery.cpp), which reads them back.
//
// Contract. capture_state() reads the segment while producers and consumers run (its result is
// at-least-once: a group may be behind what it acked, never ahead); encode_state() writes the
// checkpoint's bytes (version kCheckpointVersion); decode_state() reads versions 1 and 2, checks
// every count and length against bounds of its own, and throws shmq::Error naming the channel and
// the checkpoint's path when the bytes do not decode. Internal to the library.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmq::detail {

struct ChannelState;

inline constexpr std::string_view kStateCheckpoint = "state";  // groups and producers
inline constexpr std::string_view kMetaCheckpoint = "meta";    // the channel's geometry
inline constexpr std::uint32_t kCheckpointVersion = 2;  // 2: producers' dedup windows; 1 is still read
inline constexpr std::uint32_t kMetaVersion = 2;  // 2: the channel's incarnation; 1 is still read

struct Held {
  std::uint64_t position;
  std::uint32_t deliveries;
};
struct SavedGroup {
  std::string name;
  std::uint32_t start = 0;
  std::uint64_t next = 0;
  std::vector<Held> held;  // given back or held by a consumer: to deliver again
};
// A run of sequences a producer had accepted and that were durable: first, first + 1, ...
struct SeqRun {
  std::uint64_t first;
  std::uint32_t count;
};
struct SavedProducer {
  std::string name;
  std::uint64_t id = 0;
  std::uint64_t next_seq = 1;    // its default sequence: every sequence below may have been used
  std::uint64_t top = 0;         // the highest accepted sequence whose record is durable (0: none)
  std::vector<SeqRun> accepted;  // the durable accepted ones in (top - window, top]
};
struct State {
  std::uint64_t durable_position = 0;
  std::uint64_t next_producer_id = 0;
  std::vector<SavedProducer> producers;
  std::vector<SavedGroup> groups;
  // The lowest position of a publish that was under way when the windows were read: its record
  // may be durable without its window entry. Recovery reads the journal from here at least.
  std::uint64_t windows_from = ~0ull;

  // The lowest position a group still needs; DEFAULT when there is no group.
  std::uint64_t low_water_mark(std::uint64_t otherwise) const {
    std::uint64_t low = otherwise;
    for (const SavedGroup& g : groups) {
      low = std::min(low, g.next);
      for (const Held& h : g.held) low = std::min(low, h.position);
    }
    return low;
  }
};

std::string encode_state(const State& s);
State decode_state(std::string_view channel, const std::filesystem::path& dir, std::span<const std::byte> bytes);
// What the segment says now about groups and producers (read while they run: at-least-once).
State capture_state(ChannelState& ch, std::uint64_t durable);

}  // namespace shmq::detail
