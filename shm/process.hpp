// Processes and waiting: who is alive, and futex wait/wake on a word in shared memory.
//
// Liveness of a process = its pid plus its start time (field 22 of /proc/PID/stat, in clock ticks
// since boot), so a reused pid is not mistaken for the process that died. Both are packed into one
// 64-bit owner token (pid in the low half, the low 32 bits of the start time in the high half)
// that fits an atomic word in the segment. Liveness is the thread group's: a process whose main
// thread exited (pthread_exit) while other threads run is alive, although /proc/PID/stat shows
// its leader as a zombie; a process whose every thread exited (a zombie) counts as dead. Limit: the processes sharing a
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
// CLOCK_REALTIME for message timestamps, read cheaply: where the CPU has an invariant TSC, each
// thread extrapolates from a CLOCK_REALTIME reading with the TSC and reads the real clock again
// once a millisecond of ticks has passed (so the error stays well under a microsecond); elsewhere
// it is clock_gettime. calibrate_wall_clock() measures the TSC rate once (a few milliseconds);
// Producer calls it at setup, so that no publish pays for it.
std::uint64_t wall_clock_ns() noexcept;
void calibrate_wall_clock() noexcept;

}  // namespace shmq::detail
