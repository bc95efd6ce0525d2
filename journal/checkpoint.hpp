// Checkpoints: small named blobs (group cursors, producer sequences) kept beside the segments and
// replaced atomically, the previous version kept; and the durable mark.
//
// Contract. write_checkpoint(dir, name, bytes) writes NAME.tmp (header + bytes), fdatasyncs it,
// keeps the current NAME as NAME.prev (a hard link: NAME itself never disappears), renames NAME.tmp
// over NAME and fsyncs the directory: after it returns, NAME holds BYTES and NAME.prev the version
// before, also after a crash of the host; a crash before it returns leaves the old version or the
// new one in NAME, never a mix. A NAME.tmp left by such a crash is ignored and replaced by the next
// write.
//
// read_checkpoint_versions(dir, name) returns both versions, newest first, each whole or with the
// reason it is not (a checkpoint is an optimisation over the journal: the caller falls back to the
// previous version, then to the journal alone). read_checkpoint(dir, name) returns the newest whole
// version: nullopt when neither NAME nor NAME.prev exists, and throws shmq::Error
// (errc::illegal_byte_sequence, naming the files) when versions exist and none is whole: a corrupt
// checkpoint is never mistaken for a missing one. One writer per name at a time (the journaler);
// readers any time.
//
// Names: 1 to 200 characters of [A-Za-z0-9._-], not starting with '.', not "LOCK" or "durable", not
// ending in ".tmp", ".prev" or ".log" (those are the journal's). Files: mode MODE, O_NOFOLLOW.
//
// Format (little-endian):  magic u32 "SQCK" | masked crc32c u32 of everything after it | length u64 | bytes
//
// The durable mark, DIR/durable: the journal's end position (last record's position + 1) after its
// last fdatasync, recorded by the journaler after every sync (record_durable_mark: one pwrite, no
// sync of its own: it is written after the fdatasync of the records it names, so whatever survives
// of it never names a record that was not durable; after a host crash it may be older). Recovery
// and verify compare the journal with it: records below the mark that the journal no longer holds
// were durable and are lost (corruption), not a torn tail.
//
// Format (little-endian, 24 bytes):  magic u32 "SQDM" | masked crc32c u32 of the next 16 | position u64 | reserved u64
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmq::journal {

inline constexpr std::uint32_t kCheckpointMagic = 0x4b435153u;  // "SQCK"
inline constexpr std::size_t kCheckpointHeaderBytes = 16;
inline constexpr std::string_view kPreviousSuffix = ".prev";

// AFTER_WRITE, if set, runs once NAME.tmp is written and fdatasync'd, before the rename (a seam for
// the journaler's crash point "checkpoint.after_write").
void write_checkpoint(const std::filesystem::path& dir, std::string_view name, std::span<const std::byte> bytes,
                      unsigned mode = 0600, void (*after_write)() = nullptr);
std::optional<std::vector<std::byte>> read_checkpoint(const std::filesystem::path& dir, std::string_view name);

// One stored version of a checkpoint.
struct CheckpointVersion {
  std::string file;                            // NAME or NAME.prev
  bool exists = false;
  std::optional<std::vector<std::byte>> bytes;  // set when it exists and is whole (magic, length, CRC)
  std::string problem;                         // why not, when it exists and is not whole
};
// [0] = NAME, [1] = NAME.prev. Throws Error only if DIR cannot be opened or a file not read.
std::array<CheckpointVersion, 2> read_checkpoint_versions(const std::filesystem::path& dir, std::string_view name);

inline constexpr std::uint32_t kDurableMarkMagic = 0x4d445153u;  // "SQDM"
inline constexpr std::string_view kDurableMarkName = "durable";
inline constexpr std::size_t kDurableMarkBytes = 24;

// Records END (the journal's end position after a sync) in DIR/durable. Never throws: a mark that
// could not be written only makes recovery less able to tell loss from a torn tail; false then.
bool record_durable_mark(const std::filesystem::path& dir, std::uint64_t end, unsigned mode = 0600) noexcept;
// The recorded end; nullopt when there is no mark, or it does not read whole.
std::optional<std::uint64_t> read_durable_mark(const std::filesystem::path& dir) noexcept;

}  // namespace shmq::journal
