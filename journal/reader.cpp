#include "journal/reader.hpp"

#include "journal/checkpoint.hpp"
#include "journal/files.hpp"

#include <fcntl.h>

#include <algorithm>
#include <cstring>
#include <exception>

namespace shmq::journal {

using detail::Fd;
using detail::SegmentFile;

namespace {

constexpr std::size_t kReadChunk = 256 << 10;

// Bytes of one file, read on demand through a buffer that holds a window [start, start + len).
// A span it returns lives until the next call.
class Window {
 public:
  void reset() noexcept { start_ = 0, len_ = 0; }

  // Bytes [off, off + n) of the file; the caller guarantees off + n <= size.
  std::span<const std::byte> get(int fd, std::uint64_t size, std::uint64_t off, std::size_t n,
                                 const std::filesystem::path& dir, const std::string& name) {
    if (off >= start_ && off + n <= start_ + len_) return {buf_.data() + (off - start_), n};
    const std::size_t want = std::max<std::size_t>(n, static_cast<std::size_t>(std::min<std::uint64_t>(kReadChunk, size - off)));
    if (buf_.size() < want) buf_.resize(want);
    std::size_t kept = 0;  // bytes of the old window that the new one starts with
    if (off >= start_ && off < start_ + len_) {
      kept = static_cast<std::size_t>(start_ + len_ - off);
      std::memmove(buf_.data(), buf_.data() + (off - start_), kept);
    }
    start_ = off;
    len_ = kept;
    detail::read_all_at(fd, std::span<std::byte>(buf_.data() + kept, want - kept), off + kept, dir, name);
    len_ = want;
    return {buf_.data(), n};
  }

 private:
  std::vector<std::byte> buf_;
  std::uint64_t start_ = 0;
  std::size_t len_ = 0;
};

}  // namespace

struct Reader::Impl {
  std::filesystem::path dir;
  Fd dirfd;
  std::vector<SegmentFile> files;
  std::size_t index = 0;  // the file being read
  bool file_open = false;
  Fd fd;
  std::uint64_t size = 0;    // of the open file, when it was opened
  std::uint64_t offset = 0;  // of the next record in it
  std::uint64_t from = 0;
  std::uint64_t min_position = 0;  // the next record's position is at least this
  std::uint64_t file_records = 0;  // data records read in the open file
  std::optional<std::uint64_t> seal_next;
  std::string current;
  Window window;
  ReadReport report;

  const std::string& name() const { return files[index].name; }

  std::span<const std::byte> bytes(std::uint64_t off, std::size_t n) {
    return window.get(fd.get(), size, off, n, dir, name());
  }

  // Decodes the record at OFF, reading as much as its header asks for (and the file holds).
  Decoded decode_at(std::uint64_t off, std::uint64_t min) {
    const std::uint64_t left = size - off;
    Decoded d = decode(bytes(off, static_cast<std::size_t>(std::min<std::uint64_t>(left, kHeaderBytes))), min);
    if (d.kind == Decoded::Incomplete && d.header_valid && d.size <= left) d = decode(bytes(off, d.size), min);
    return d;
  }

  // The lowest position that a corruption at the current place may have lost.
  std::uint64_t lost_from() const {
    return file_records > 0 ? *report.last_position + 1 : files[index].first;
  }

  [[noreturn]] void corrupt(std::uint64_t at, const std::string& why) {
    report.first_bad_position = lost_from();
    detail::throw_error(std::errc::illegal_byte_sequence, dir,
                        "segment " + name() + ", offset " + std::to_string(at) + ": corrupt record at position >= " +
                            std::to_string(lost_from()) + ": " + why);
  }

  void open_file() {
    fd = detail::open_regular(dirfd.get(), dir, name(), O_RDONLY);
    size = detail::file_size(fd.get(), dir, name());
    offset = 0;
    window.reset();
    file_records = 0;
    seal_next.reset();
    min_position = files[index].first;
    file_open = true;
    current = name();
    ++report.files;
  }

  // Bad bytes at OFF. In an earlier file, or followed by a valid record, they are corruption;
  // otherwise they are the torn tail of the journal, which ends at OFF.
  void bad_spot(std::uint64_t off, const Decoded& d) {
    const std::string why = d.kind == Decoded::Incomplete && d.header_valid
                                ? std::string(d.why) + " (needs " + std::to_string(d.size) + " bytes, the file has " +
                                      std::to_string(size - off) + ")"
                                : std::string(d.why);
    if (index + 1 < files.size()) corrupt(off, why + "; not the last segment file, so not a torn tail");
    // Is there a valid record further on? Every byte offset is tried, not only the 8-byte aligned
    // ones, so that bytes inserted into the file do not hide the records after them. Bounded work:
    // CRCs over at most BUDGET bytes (headers that fail the cheap checks cost nothing).
    const std::uint64_t budget = std::max<std::uint64_t>(std::uint64_t{1} << 30, 8 * size);
    std::uint64_t spent = 0;
    for (std::uint64_t o = off + 1; o < size && size - o >= kHeaderBytes; ++o) {
      const Decoded h = decode(bytes(o, kHeaderBytes), min_position);
      if (h.kind == Decoded::Corrupt || h.size > size - o) continue;
      spent += h.size;
      if (spent > budget)
        corrupt(off, why + "; too much data follows to tell a torn tail from corruption (stopped at offset " +
                         std::to_string(o) + ")");
      const Decoded r = decode(bytes(o, h.size), min_position);
      if (r.kind == Decoded::Ok)
        corrupt(off, why + "; a valid record (position " + std::to_string(r.record.position) + ") follows at offset " +
                         std::to_string(o) + ", so this is not a torn tail");
    }
    report.torn_bytes = size - off;
    report.torn_records = d.header_valid ? 1 : 0;
    report.torn_what = "segment " + name() + ", offset " + std::to_string(off) + ": " + why;
    size = off;  // the journal ends here
  }

  void finish() {
    report.at_end = true;
    if (files.empty()) {
      if (report.durable_mark && *report.durable_mark > 0) {
        report.lost_from = 0;
        report.lost_what = "the journal has no segment file but records up to position " +
                           std::to_string(*report.durable_mark) + " were durable (the durable mark): its files were deleted";
      }
      return;
    }
    report.last_file = files.back().name;
    report.last_file_valid_bytes = size;
    report.last_file_records = file_records;
    report.last_file_sealed = seal_next.has_value();
    if (seal_next)
      report.end_position = *seal_next;
    else if (file_records > 0)
      report.end_position = *report.last_position + 1;
    else
      report.end_position = files.back().first;
    fd.reset();
    file_open = false;
    // Below the durable mark, nothing may be missing: a journal that ends there lost records
    // that an fdatasync had made durable.
    if (report.durable_mark && report.end_position < *report.durable_mark) {
      report.lost_from = report.end_position;
      report.lost_bytes = report.torn_bytes;
      std::string what = "the journal ends at position " + std::to_string(report.end_position) +
                         " but records up to position " + std::to_string(*report.durable_mark) +
                         " were durable (the durable mark): ";
      if (report.torn_bytes > 0)
        what += "damaged bytes, not a torn tail: " + report.torn_what;
      else if (report.last_file_sealed)
        what += "the last file " + report.last_file + " is sealed and names " + detail::segment_name(report.end_position) +
                ", which does not exist: a segment file was deleted";
      else
        what += "the last file " + report.last_file + " was cut at a record boundary, or later files were deleted";
      report.lost_what = std::move(what);
      report.torn_bytes = 0;
      report.torn_records = 0;
      report.torn_what.clear();
    }
  }

  bool next(RecordView& out) {
    if (report.at_end) return false;
    for (;;) {
      if (!file_open) {
        if (index >= files.size()) {
          finish();
          return false;
        }
        open_file();
      }
      if (offset == size) {  // the end of this file
        if (index + 1 == files.size()) {
          finish();
          return false;
        }
        const std::uint64_t next_first = files[index + 1].first;
        if (!seal_next) corrupt(offset, "the file ends without a seal: it was cut short, or it is not complete");
        if (*seal_next != next_first)
          corrupt(offset, "its seal names the next file " + detail::segment_name(*seal_next) + " but the next file is " +
                              files[index + 1].name + ": a segment file is missing");
        fd.reset();
        file_open = false;
        ++index;
        continue;
      }
      const Decoded d = decode_at(offset, min_position);
      if (d.kind != Decoded::Ok) {
        bad_spot(offset, d);
        continue;  // at the (new) end of the file
      }
      if (seal_next) corrupt(offset, "a record follows the seal, which ends its file");
      report.bytes += d.size;
      const std::uint64_t at = offset;
      offset += d.size;
      if ((d.record.flags & kFlagSeal) != 0) {
        if (d.record.seq != file_records)
          corrupt(at, "the seal counts " + std::to_string(d.record.seq) + " records, the file holds " +
                          std::to_string(file_records));
        seal_next = d.record.position;
        min_position = d.record.position;
        continue;
      }
      ++file_records;
      report.last_position = d.record.position;
      min_position = d.record.position + 1;  // < kNoPosition: decode() refuses that one
      if (d.record.position < from) {
        ++report.skipped;
        continue;
      }
      ++report.records;
      out = d.record;
      return true;
    }
  }
};

Reader::Reader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Reader::Reader(Reader&&) noexcept = default;
Reader& Reader::operator=(Reader&&) noexcept = default;
Reader::~Reader() = default;

Reader Reader::open(const std::filesystem::path& dir, std::uint64_t from_position) {
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->dirfd = detail::open_dir(dir);
  // The mark first: read after the listing, it could name records of a file created since (a
  // Writer appending meanwhile), which this Reader does not see; read before, it never does.
  impl->report.durable_mark = read_durable_mark(dir);
  impl->files = detail::list_segments(impl->dirfd.get(), dir);
  impl->from = from_position;
  // Start in the last file whose name is <= FROM (its records are >= its name, those of the files
  // before it are below it).
  for (std::size_t i = 0; i < impl->files.size() && impl->files[i].first <= from_position; ++i) impl->index = i;
  return Reader(std::move(impl));
}

bool Reader::next(RecordView& record) { return impl_->next(record); }
const ReadReport& Reader::report() const noexcept { return impl_->report; }
const std::string& Reader::current_file() const noexcept { return impl_->current; }

VerifyReport verify(const std::filesystem::path& dir, const std::function<void(const VerifyProgress&)>& progress) noexcept {
  VerifyReport v;
  std::optional<Reader> reader;
  auto fill = [&] {
    const ReadReport& r = reader->report();
    v.records = r.records;
    v.bytes = r.bytes;
    v.files = r.files;
    v.end_position = r.end_position;
    v.first_bad_position = r.first_bad_position;
    v.torn_bytes = r.torn_bytes;
    v.durable_mark = r.durable_mark;
    v.lost_from = r.lost_from;
  };
  try {
    reader.emplace(Reader::open(dir, 0));
    RecordView rec;
    std::uint64_t files_seen = 0;
    std::string file;
    for (;;) {
      const bool more = reader->next(rec);
      const ReadReport& r = reader->report();
      if (progress && r.files != files_seen) {
        files_seen = r.files;
        progress(VerifyProgress{reader->current_file(), r.files - 1, r.records, r.bytes});
      }
      if (!more) break;
    }
    fill();
    v.ok = !v.lost_from;
    if (v.lost_from) {
      v.first_bad_position = v.lost_from;
      v.what = "durable records lost: " + reader->report().lost_what;
    } else if (v.torn_bytes > 0) {
      v.what = "torn tail: " + reader->report().torn_what;
    }
    if (progress) progress(VerifyProgress{reader->report().last_file, v.files, v.records, v.bytes});
  } catch (const std::exception& e) {
    if (reader) fill();
    v.ok = false;
    v.what = e.what();
  } catch (...) {
    v.ok = false;
    v.what = "unknown exception";
  }
  return v;
}

}  // namespace shmq::journal
