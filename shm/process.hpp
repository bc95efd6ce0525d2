// Processes and waiting: who is alive, and futex wait/wake on a word in shared memory.
//
// Liveness of a process = its pid plus its start time (field 22 of /proc/PID/stat, in clock ticks
// since boot), so a reused pid is not mistaken for the process that died. Both are packed into one
// 64-bit owner token (pid in the low half, the low 32 bits of the start time in the high half)
// that fits an atomic word in the segment. A zombie counts as dead. Limit: the processes sharing a
// channel must see one pid namespace (the same /proc).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace shmq::detail {

// This process's owner token (computed at first use and again after fork()).
std::uint64_t self_token() noexcept;
inline int token_pid(std::uint64_t token) noexcept { return static_cast<int>(token & 0xffffffffu); }

// Is the process named by TOKEN alive? Reads /proc; a few microseconds; not for hot paths.
bool token_alive(std::uint64_t token) noexcept;

// Blocks while *WORD == EXPECTED, at most TIMEOUT (negative or zero: forever). Returns false on
// timeout. Spurious returns are allowed: the caller re-checks its condition.
bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, std::chrono::nanoseconds timeout) noexcept;
void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept;

std::uint64_t now_ns() noexcept;            // CLOCK_MONOTONIC
std::uint64_t wall_clock_ns() noexcept;     // CLOCK_REALTIME, for message timestamps

}  // namespace shmq::detail
