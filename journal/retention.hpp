// Retention: removing the oldest segment files once nobody needs their records.
//
// Contract. delete_segments_before(dir, position, min_age, max_total_bytes) deletes segment files
// from the oldest on, and stops at the first that does not qualify. A file qualifies when every
// record in it is below POSITION (that is, the NEXT file's name is <= POSITION) and either it was
// last written at least MIN_AGE ago or the journal's files still add up to more than
// MAX_TOTAL_BYTES. The last file (the one being written) is never deleted, and only a prefix of the
// files is, so the journal stays one unbroken run. The directory is fsync'd after the deletions.
// Returns the paths deleted, oldest first. A file that vanished meanwhile (another retention) is
// skipped; any other error throws shmq::Error with the errno and the file.
//
// Pass max_total_bytes = UINT64_MAX for age alone, min_age = a huge value for size alone.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <vector>

namespace shmq::journal {

std::vector<std::filesystem::path> delete_segments_before(const std::filesystem::path& dir, std::uint64_t position,
                                                          std::chrono::seconds min_age,
                                                          std::uint64_t max_total_bytes);

}  // namespace shmq::journal
