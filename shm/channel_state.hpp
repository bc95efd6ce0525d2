// What a process holds of an open channel: its mapping, the effective options, and the table
// operations shared by Channel, Producer and Consumer (registry lock, gate, group lookup).
#pragma once

#include <string>

#include "shm/process.hpp"
#include "shm/segment.hpp"

namespace shmq::detail {

struct ChannelState {
  std::string name;
  ChannelOptions options;              // effective: the segment's geometry
  std::unique_ptr<Segment> segment;
  SegmentHeader* header = nullptr;
  ProducerSlot* producers = nullptr;
  GroupSlot* groups = nullptr;
  ConsumerSlot* consumers = nullptr;
  ring::RecordRing* ring = nullptr;

  // The lowest position any group still needs: its delivery cursor or a message one of its
  // consumers holds. Ring space below it may be reused. With no group at all, the tail.
  std::uint64_t gate() const noexcept;
  static std::uint64_t gate_of(void* self) noexcept { return static_cast<ChannelState*>(self)->gate(); }
  static bool alive(std::uint64_t token) noexcept { return token_alive(token); }

  // Makes room for a claim that reaches NEED_END; false when the slowest group holds it up.
  bool reclaim(std::uint64_t need_end) noexcept {
    return ring->reclaim(need_end, self_token(), &ChannelState::gate_of, this, &ChannelState::alive);
  }

  // Serialises changes to the producer, group and consumer tables (a dead holder is replaced).
  void lock_registry() noexcept { ring::lock_owner_word(header->registry_lock, self_token(), &ChannelState::alive); }
  void unlock_registry() noexcept { ring::unlock_owner_word(header->registry_lock); }

  // Index of the active group NAME, or -1. Call with the registry lock held.
  int find_group(std::string_view group) const noexcept;
  // Index of group NAME, created (starting per START) if needed; throws Error if the table is full.
  // Call with the registry lock held.
  int ensure_group(std::string_view group, Start start);

  [[noreturn]] void fail(std::errc code, const std::string& what) const;
};

// RAII for the registry lock.
class RegistryLock {
 public:
  explicit RegistryLock(ChannelState& s) : s_(s) { s_.lock_registry(); }
  ~RegistryLock() { s_.unlock_registry(); }
  RegistryLock(const RegistryLock&) = delete;
  RegistryLock& operator=(const RegistryLock&) = delete;

 private:
  ChannelState& s_;
};

// Copies NAME into a fixed slot name field (checked to fit beforehand).
void set_slot_name(char (&field)[kMaxSlotName + 1], std::string_view name) noexcept;
inline std::string_view slot_name(const char (&field)[kMaxSlotName + 1]) noexcept {
  return {field, ::strnlen(field, kMaxSlotName)};
}

}  // namespace shmq::detail
