#include "shm/crash_point.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace shmq::detail {

#ifdef SHMQ_CRASH_POINTS
namespace {

constexpr std::size_t kNone = ~std::size_t{0};

// The armed point and how many more passes it lets through. Atomics: points are passed by every
// thread of the process (the journaler's among them).
std::atomic<std::size_t> g_armed{kNone};
std::atomic<long> g_remaining{0};

void arm(std::string_view spec) noexcept {
  unsigned hit = 1;
  std::string_view name = spec;
  if (const auto colon = spec.rfind(':'); colon != std::string_view::npos) {
    name = spec.substr(0, colon);
    hit = static_cast<unsigned>(std::strtoul(std::string(spec.substr(colon + 1)).c_str(), nullptr, 10));
    if (hit == 0) hit = 1;
  }
  arm_crash_point(name, hit);
}

// SHMQ_CRASH_AT is read once, before main.
[[maybe_unused]] const bool g_from_env = [] {
  if (const char* spec = std::getenv("SHMQ_CRASH_AT"); spec && *spec) arm(spec);
  return true;
}();

}  // namespace

void crash_point_reached(std::size_t id) noexcept {
  if (g_armed.load(std::memory_order_relaxed) != id) return;
  if (g_remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    ::kill(::getpid(), SIGKILL);
    for (;;) ::pause();  // SIGKILL is delivered before kill() returns to a single-threaded caller; never go on
  }
}

void arm_crash_point(std::string_view name, unsigned hit) noexcept {
  g_armed.store(kNone, std::memory_order_relaxed);
  if (name.empty()) return;
  for (std::size_t i = 0; i < std::size(kCrashPoints); ++i) {
    if (kCrashPoints[i] != name) continue;
    g_remaining.store(hit == 0 ? 1 : hit, std::memory_order_relaxed);
    g_armed.store(i, std::memory_order_release);
    return;
  }
}

bool crash_points_enabled() noexcept { return true; }
#else
void arm_crash_point(std::string_view, unsigned) noexcept {}
bool crash_points_enabled() noexcept { return false; }
#endif

}  // namespace shmq::detail
