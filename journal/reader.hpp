// Reading a journal: records in position order across its segment files, and verification.
//
// Contract. Reader::open(dir, from) lists the segment files once; next() returns the data records
// whose position is >= FROM, in order, across the files, checking every record (lengths, CRC,
// increasing positions) and every link between files (each file but the last ends with a seal that
// names the next file). It returns false at the end of the journal, and throws shmq::Error
// (errc::illegal_byte_sequence, naming the file, the offset and the positions that are unreadable)
// at corruption in the middle of the journal. The journal's end is checked against the durable
// mark (DIR/durable, written by the journaler after each fdatasync): an end below it (the last
// file cut at a record boundary, a last file deleted although the seal before it names it, a
// damaged last record) is loss of durable records, reported in lost_from / lost_what, never as a
// torn tail; next() still returns false there, so that recovery can put back what is left. The end of the LAST file is special: bytes after its last whole record that no
// valid record follows are a torn tail (a write cut by a crash, or one in progress) and end the
// journal without an exception; report() says how many bytes. Anything bad that a valid record
// follows, and anything bad in an earlier file, is corruption.
//
// The reader trusts nothing it reads: every length is checked before it is used, buffers grow only
// to what the file really holds. A RecordView stays valid until the next call to next(). One
// thread at a time. Reading a journal that a Writer is appending to is allowed (the end seen is the
// one at the time each file is opened); a file removed by retention after open() makes next()
// throw when it gets there.
#pragma once

#include "journal/format.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace shmq::journal {

struct ReadReport {
  std::uint64_t files = 0;    // segment files opened
  std::uint64_t records = 0;  // data records returned by next()
  std::uint64_t skipped = 0;  // data records below the start position: checked, not returned
  std::uint64_t bytes = 0;    // bytes of whole records read (seals and skipped records included)

  // Filled in when next() returns false.
  bool at_end = false;
  std::uint64_t end_position = 0;              // the lowest position a writer may append next
  std::optional<std::uint64_t> last_position;  // of the last data record read
  std::string last_file;                       // name of the last segment file, "" if there is none
  std::uint64_t last_file_valid_bytes = 0;     // its length up to the end of its last whole record
  std::uint64_t last_file_records = 0;         // data records in it
  bool last_file_sealed = false;               // it ends with a seal (a crash between two files)

  // The torn tail of the last file: bytes after its last whole record.
  std::uint64_t torn_bytes = 0;
  std::uint32_t torn_records = 0;  // 1 when those bytes begin with a header that reads well, else 0
  std::string torn_what;           // why the first of them is not a record

  // Set when next() throws for corruption: every position below it was read intact.
  std::optional<std::uint64_t> first_bad_position;

  // The durable mark (checkpoint.hpp: the journal's end after its last fdatasync), read at open.
  std::optional<std::uint64_t> durable_mark;
  // Filled in when next() returns false and the journal ends below the durable mark: the records
  // in [lost_from, durable_mark) were durable and are gone (a file cut at a record boundary, a
  // last file deleted, damage in the last records). Corruption, not a torn tail: torn_bytes is
  // then 0 and the bytes cut are counted here.
  std::optional<std::uint64_t> lost_from;
  std::uint64_t lost_bytes = 0;  // bytes of the last file after its last whole record, cut (0 if none)
  std::string lost_what;         // in words: which file, what was found instead
};

class Reader {
 public:
  // Throws Error if DIR cannot be opened or listed.
  static Reader open(const std::filesystem::path& dir, std::uint64_t from_position = 0);

  // The next data record at or after the start position; false at the end of the journal.
  bool next(RecordView& record);
  const ReadReport& report() const noexcept;
  // Name of the segment file being read ("" before the first).
  const std::string& current_file() const noexcept;

  Reader(Reader&&) noexcept;
  Reader& operator=(Reader&&) noexcept;
  ~Reader();

 private:
  struct Impl;
  explicit Reader(std::unique_ptr<Impl>);
  std::unique_ptr<Impl> impl_;
};

struct VerifyProgress {
  std::string file;          // the file being read
  std::uint64_t files_done;  // files read completely
  std::uint64_t records;
  std::uint64_t bytes;
};

struct VerifyReport {
  bool ok = false;  // every file read, no corruption, nothing lost below the durable mark (a torn tail is still ok)
  std::uint64_t records = 0;
  std::uint64_t bytes = 0;
  std::uint64_t files = 0;
  std::uint64_t end_position = 0;
  std::optional<std::uint64_t> first_bad_position;  // corruption: every position below it is intact
  std::uint64_t torn_bytes = 0;                       // torn tail of the last file
  std::optional<std::uint64_t> durable_mark;          // the journal's end after its last sync, as recorded
  std::optional<std::uint64_t> lost_from;             // records in [lost_from, durable_mark) are gone
  std::string what;  // "" when ok and nothing was torn; else the error or the torn tail, in words
};

// Reads the whole journal and reports; never throws (errors end up in `what`). PROGRESS, if set, is
// called when a file is started and once at the end.
VerifyReport verify(const std::filesystem::path& dir,
                    const std::function<void(const VerifyProgress&)>& progress = {}) noexcept;

}  // namespace shmq::journal
