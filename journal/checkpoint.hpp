// Checkpoints: small named blobs (group cursors, producer sequences) kept beside the segments and
// replaced atomically.
//
// Contract. write_checkpoint(dir, name, bytes) writes NAME.tmp (header + bytes), fdatasyncs it,
// renames it over NAME and fsyncs the directory: after it returns, read_checkpoint returns BYTES,
// also after a crash of the host; a crash before it returns leaves either the old checkpoint or the
// new one, never a mix. A NAME.tmp left by such a crash is ignored by read_checkpoint and replaced
// by the next write. read_checkpoint returns nullopt when NAME does not exist, the bytes when it is
// whole, and throws shmq::Error (errc::illegal_byte_sequence, naming the file) when it is not: a
// corrupt checkpoint is never mistaken for a missing one. One writer per name at a time (the
// journaler); readers any time.
//
// Names: 1 to 200 characters of [A-Za-z0-9._-], not starting with '.', not "LOCK", not ending in
// ".tmp" or ".log" (those are the journal's). Files: mode MODE, opened with O_NOFOLLOW.
//
// Format (little-endian):  magic u32 "SQCK" | masked crc32c u32 of everything after it | length u64 | bytes
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace shmq::journal {

inline constexpr std::uint32_t kCheckpointMagic = 0x4b435153u;  // "SQCK"
inline constexpr std::size_t kCheckpointHeaderBytes = 16;

// AFTER_WRITE, if set, runs once NAME.tmp is written and fdatasync'd, before the rename (a seam for
// the journaler's crash point "checkpoint.after_write").
void write_checkpoint(const std::filesystem::path& dir, std::string_view name, std::span<const std::byte> bytes,
                      unsigned mode = 0600, void (*after_write)() = nullptr);
std::optional<std::vector<std::byte>> read_checkpoint(const std::filesystem::path& dir, std::string_view name);

}  // namespace shmq::journal
