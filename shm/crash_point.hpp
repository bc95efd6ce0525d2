// Named crash points: test builds kill the process at a named instruction of a protocol.
//
// Contract. SHMQ_CRASH_POINT("name") marks a place in the code where a process may die (after a
// store to shared memory, between a journal write and its fdatasync, ...). In a build configured
// with -DSHMQ_CRASH_POINTS=ON (the test builds of `make test`), a process whose environment holds
// SHMQ_CRASH_AT=name (or name:N, the Nth time the point is passed, counting from 1) sends itself
// SIGKILL there, the way the kernel would kill it: no destructor, no atexit, no flush. A test may
// also arm a point in a forked child with arm_crash_point(). In any other build the macro is
// nothing at all, so Release binaries carry no trace of it.
//
// Every name must be listed in kCrashPoints below (a misspelt name does not compile), so that a
// test can walk all of them: tests/crash_point_test.cpp kills a real process at each one and
// checks what the survivors see.
#pragma once

#include <cstddef>
#include <string_view>

namespace shmq::detail {

inline constexpr std::string_view kCrashPoints[] = {
    // Producer::publish / Claim::commit (shm/producer.cpp)
    "publish.after_announce",      // the slot names the claimed position, frame word not written
    "publish.after_commit",        // frame word committed, dedup window not yet updated
    "publish.after_accept",        // window updated, announcement not cleared
    // Consumer::poll (shm/consumer.cpp)
    "poll.after_in_flight_store",  // entry holds the position, group cursor CAS not done
    "poll.after_cursor_cas",       // cursor advanced past the record, deliveries not stored
    "poll.exclusive.after_in_flight_store",  // an exclusive consumer's entry is tentative, the cursor not yet stored
    "poll.exclusive.after_cursor_store",     // an exclusive consumer's cursor stored past the record, entry still tentative
    "poll.run.after_first_held",       // a run of records taken (cursor moved), the first entry held, the others still tentative
    "poll.take_given_back.after_hold",    // entry holds a given-back message, list entry not cleared
    "poll.take_given_back.after_clear",   // list entry cleared, count not lowered
    // Consumer::ack / nack, reaping (shm/consumer.cpp, shm/channel.cpp)
    "ack.before_clear",
    "move_held.after_moving_bit",  // entry marked moving, not yet on the give-back list
    "move_held.after_push",        // on the give-back list, entry not yet cleared
    "push.after_entry",            // a give-back list entry stored, the list's count not yet raised
    "reap.before_release",         // a reaper (or a joiner, admit_consumer) holds the registry lock, about to give back
    "dead_letter.after_commit",    // a poison message's copy committed in NAME.dlq, its dedup window not updated
    "dead_letter.after_copy",      // the copy is in NAME.dlq, the message not yet acked here
    // Journaler (shm/journaler.cpp)
    "journal.after_write",         // records written to the file, not yet fdatasync'd
    "journal.after_sync",          // fdatasync'd, durable_position not yet published
    "checkpoint.after_write",      // checkpoint written, not yet renamed into place
    "checkpoint.after_keep_previous",  // the current version linked as NAME.prev, the new one not renamed in
    // Ring and segment (ringbuffer/record_ring.cpp, shm/segment.cpp)
    "unblock.holding_clean_lock",  // a reader holds clean_lock to pad a dead claim, padding not stored
    "segment.after_create",        // segment file made (O_EXCL) and given its mode, not yet sized
    "claim.after_frame_cas",       // claim marker stored at the tail by CAS, the tail not yet moved past it
    "claim.alone.after_marker",    // an exclusive producer's claim marker stored at the tail, the tail not yet moved
    "commit.after_frame",          // record's frame committed, the claimer slot's intent not yet cleared
    "segment.after_name_link",     // huge pages: /dev/shm/shmq.NAME links to the hugetlbfs file, which is not made yet
    "segment.after_prefault",      // segment sized, allocated and populated (prefault), header not yet written
};

consteval std::size_t crash_point_id(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kCrashPoints); ++i)
    if (kCrashPoints[i] == name) return i;
  throw "SHMQ_CRASH_POINT: the name is not listed in kCrashPoints (shm/crash_point.hpp)";
}

// Arms point NAME to kill this process the HIT-th time it is passed (1: the first); replaces
// whatever SHMQ_CRASH_AT armed. An empty NAME disarms. Test builds only (a no-op elsewhere).
void arm_crash_point(std::string_view name, unsigned hit = 1) noexcept;
// Whether this build has crash points compiled in.
bool crash_points_enabled() noexcept;

#ifdef SHMQ_CRASH_POINTS
void crash_point_reached(std::size_t id) noexcept;
#define SHMQ_CRASH_POINT(name)                                                            \
  do {                                                                                    \
    constexpr std::size_t shmq_crash_id_ = ::shmq::detail::crash_point_id(name);         \
    ::shmq::detail::crash_point_reached(shmq_crash_id_);                                  \
  } while (0)
#else
#define SHMQ_CRASH_POINT(name) \
  do {                         \
  } while (0)
#endif

}  // namespace shmq::detail
