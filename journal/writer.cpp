#include "journal/writer.hpp"

#include "journal/files.hpp"
#include "journal/format.hpp"
#include "journal/reader.hpp"
#include "ringbuffer/shared_bytes.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

namespace shmq::journal {

using detail::Fd;

struct Writer::Impl {
  std::filesystem::path dir;
  WriterOptions opt;
  Fd dirfd;
  Fd lockfd;
  Fd fd;                           // the current file; invalid before the first append of a file
  std::string file_name;
  std::uint64_t file_bytes = 0;    // its length, buffered bytes included
  std::uint64_t file_records = 0;  // data records in it
  std::optional<std::uint64_t> next_file_first;  // the name the next file must take (after a seal found at open)
  std::unique_ptr<std::byte[]> buf;
  std::size_t buf_used = 0;        // the buffer holds the last buf_used bytes of file_bytes
  std::uint64_t end = 0;
  std::uint64_t synced = 0;
  bool closed = false;
  std::string failed;              // what() of the error that failed the Writer
  RecoveryReport recovery;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (!fd.valid() || !failed.empty()) return;
    try {
      flush();
    } catch (...) {  // documented: the destructor cannot report an error; sync() and close() do
    }
  }

  void check_usable() const {
    if (!failed.empty())
      detail::throw_error(std::errc::io_error, dir, "the Writer failed earlier and must be reopened: " + failed);
    if (closed) detail::throw_error(std::errc::bad_file_descriptor, dir, "the Writer is closed");
  }

  // Runs an I/O step; an exception leaves the Writer failed.
  template <class F>
  void io(F&& step) {
    try {
      step();
    } catch (const std::exception& e) {
      failed = e.what();
      throw;
    }
  }

  void flush() {
    if (buf_used == 0) return;
    detail::write_all_at(fd.get(), std::span<const std::byte>(buf.get(), buf_used), file_bytes - buf_used, dir, file_name);
    buf_used = 0;
  }

  void datasync() {
    if (::fdatasync(fd.get()) != 0) detail::throw_errno(errno, dir, "fdatasync of " + file_name + " failed");
  }

  void start_file(std::uint64_t first) {
    file_name = detail::segment_name(first);
    // O_EXCL with O_NOFOLLOW: a symlink (or anything) already at the name is refused, never followed.
    const int f = ::openat(dirfd.get(), file_name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                           static_cast<mode_t>(opt.file_mode));
    if (f < 0) detail::throw_errno(errno, dir, "cannot create segment " + file_name);
    fd = Fd(f);
    if (::fchmod(fd.get(), static_cast<mode_t>(opt.file_mode)) != 0)
      detail::throw_errno(errno, dir, "fchmod of " + file_name + " failed");
    detail::sync_dir(dirfd.get(), dir);
    file_bytes = 0;
    file_records = 0;
    next_file_first.reset();
  }

  // Puts one record into the buffer (or, larger than the buffer, straight into the file).
  void put(std::uint64_t position, std::uint64_t producer, std::uint64_t seq, std::uint64_t timestamp_ns,
           std::span<const std::byte> key, std::span<const std::byte> payload, std::uint32_t flags) {
    const auto key_len = static_cast<std::uint32_t>(key.size());
    const auto payload_len = static_cast<std::uint32_t>(payload.size());
    const std::size_t length = kHeaderBytes + key.size() + payload.size();
    const std::size_t padded = align_record(length);
    if (padded <= opt.buffer_bytes) {
      if (buf_used + padded > opt.buffer_bytes) flush();
      std::byte* r = buf.get() + buf_used;
      encode_header(r, position, producer, seq, timestamp_ns, key_len, payload_len, flags);
      // From the ring (see ring::copy_out): a scribbled position can let a producer reuse it meanwhile.
      ring::copy_out(r + kHeaderBytes, key.data(), key.size());
      ring::copy_out(r + kHeaderBytes + key.size(), payload.data(), payload.size());
      std::memset(r + length, 0, padded - length);
      seal_crc(r);
      buf_used += padded;
    } else {
      flush();
      std::byte head[kHeaderBytes];
      static constexpr std::byte kZeros[kRecordAlign] = {};
      encode_header(head, position, producer, seq, timestamp_ns, key_len, payload_len, flags);
      const std::span<const std::byte> pad(kZeros, padded - length);
      const std::span<const std::byte> parts[] = {std::span<const std::byte>(head + 4, kHeaderBytes - 4), key, payload, pad};
      const std::uint32_t crc = record_crc(parts);
      std::memcpy(head, &crc, sizeof crc);
      std::uint64_t at = file_bytes;
      for (const auto& part : {std::span<const std::byte>(head, kHeaderBytes), key, payload, pad}) {
        detail::write_all_at(fd.get(), part, at, dir, file_name);
        at += part.size();
      }
    }
    file_bytes += padded;
  }

  // Ends the current file with a seal naming NEXT, makes it durable and closes it.
  void roll(std::uint64_t next) {
    put(next, 0, file_records, 0, {}, {}, kFlagSeal);
    flush();
    datasync();
    fd.reset();
    synced = next;  // every record below NEXT was in the file just made durable
  }

  // Drops every record at or above POSITION (see truncate() in the header).
  void drop_from(std::uint64_t position) {
    buf_used = 0;  // the buffer's bytes were never written: nothing to drop on disk for them
    fd.reset();
    const auto files = detail::list_segments(dirfd.get(), dir);
    bool removed = false;
    std::size_t keep = files.size();  // files[0, keep) stay
    while (keep > 0 && files[keep - 1].first > position) {
      const std::string& name = files[keep - 1].name;
      if (::unlinkat(dirfd.get(), name.c_str(), 0) != 0 && errno != ENOENT)
        detail::throw_errno(errno, dir, "cannot remove " + name + " (past the durable position " + std::to_string(position) + ")");
      removed = true;
      --keep;
    }
    next_file_first.reset();
    file_name.clear();
    file_bytes = 0;
    file_records = 0;
    end = 0;
    if (keep > 0) {
      const std::string name = files[keep - 1].name;
      Fd f = detail::open_regular(dirfd.get(), dir, name, O_RDWR);
      const std::uint64_t size = detail::file_size(f.get(), dir, name);
      // Walk the headers (their lengths checked against the file: it is input like any other)
      // up to the first record at or above POSITION, reading the file in chunks. Every step moves
      // on by >= kHeaderBytes, so the loop ends within size / kHeaderBytes steps.
      std::uint64_t at = 0, records = 0;
      std::optional<std::uint64_t> last_position, seal_next;
      constexpr std::size_t kChunk = 1 << 20;
      std::vector<std::byte> chunk;
      std::uint64_t chunk_at = 0;  // file offset of chunk[0]
      while (size - at >= kHeaderBytes) {
        if (at < chunk_at || at + kHeaderBytes > chunk_at + chunk.size()) {
          chunk.resize(static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, size - at)));
          chunk_at = at;
          detail::read_all_at(f.get(), chunk, at, dir, name);
        }
        RecordHeader h;
        std::memcpy(&h, chunk.data() + (at - chunk_at), sizeof h);
        if (h.length < kHeaderBytes || h.length > kMaxRecordBytes || align_record(h.length) > size - at)
          break;  // not a whole record: a torn tail (open() cut it already), nothing to keep after it
        if (h.position >= position) break;
        if ((h.flags & kFlagSeal) != 0) {
          seal_next = h.position;  // a seal below POSITION: the next file (missing) must take its name
        } else {
          last_position = h.position;
          ++records;
        }
        at += align_record(h.length);
        if (seal_next) break;  // nothing follows a seal
      }
      if (::ftruncate(f.get(), static_cast<off_t>(at)) != 0)
        detail::throw_errno(errno, dir, "cannot cut " + name + " at offset " + std::to_string(at) +
                                            " (the durable position " + std::to_string(position) + ")");
      if (::fsync(f.get()) != 0) detail::throw_errno(errno, dir, "fsync of " + name + " failed");
      const std::uint64_t first = files[keep - 1].first;
      end = last_position ? *last_position + 1 : first;
      if (seal_next) {
        next_file_first = *seal_next;
        end = std::max(end, *seal_next);
      } else {
        fd = std::move(f);
        file_name = name;
        file_bytes = at;
        file_records = records;
      }
    }
    if (removed) detail::sync_dir(dirfd.get(), dir);
    synced = end;
  }

  void recover() {
    const auto files = detail::list_segments(dirfd.get(), dir);
    recovery.files = files.size();
    if (files.empty()) return;
    const std::uint64_t from = opt.verify_on_open || files.size() < 2 ? 0 : files[files.size() - 2].first;
    Reader reader = Reader::open(dir, from);  // throws at corruption
    RecordView r;
    while (reader.next(r)) {
    }
    const ReadReport& rep = reader.report();
    recovery.records = rep.records;
    Fd last = detail::open_regular(dirfd.get(), dir, rep.last_file, O_WRONLY);
    if (rep.torn_bytes > 0) {
      if (::ftruncate(last.get(), static_cast<off_t>(rep.last_file_valid_bytes)) != 0)
        detail::throw_errno(errno, dir, "cannot cut the torn tail of " + rep.last_file + " at offset " +
                                            std::to_string(rep.last_file_valid_bytes));
      recovery.truncated_file = rep.last_file;
      recovery.truncated_at = rep.last_file_valid_bytes;
      recovery.dropped_bytes = rep.torn_bytes;
      recovery.dropped_records = rep.torn_records;
      recovery.what = rep.torn_what;
    }
    // What we read may have been in the page cache only (a crashed process, not a crashed host).
    if (::fdatasync(last.get()) != 0) detail::throw_errno(errno, dir, "fdatasync of " + rep.last_file + " failed");
    detail::sync_dir(dirfd.get(), dir);
    end = rep.end_position;
    if (rep.last_file_sealed) {
      next_file_first = rep.end_position;  // a crash between sealing a file and creating the next
    } else {
      fd = std::move(last);
      file_name = rep.last_file;
      file_bytes = rep.last_file_valid_bytes;
      file_records = rep.last_file_records;
    }
  }
};

Writer::Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Writer::Writer(Writer&&) noexcept = default;
Writer& Writer::operator=(Writer&&) noexcept = default;

Writer::~Writer() = default;

Writer Writer::open(const std::filesystem::path& dir, const WriterOptions& options) {
  if (options.segment_bytes < 1024) detail::throw_error(std::errc::invalid_argument, dir, "segment_bytes below 1 KiB");
  if (options.buffer_bytes < 64 || options.buffer_bytes > kMaxRecordBytes)
    detail::throw_error(std::errc::invalid_argument, dir, "buffer_bytes outside [64 B, 1 GiB]");
  if ((options.file_mode & ~0777u) != 0) detail::throw_error(std::errc::invalid_argument, dir, "file_mode beyond 0777");
  auto w = std::make_unique<Impl>();
  w->dir = dir;
  w->opt = options;
  w->dirfd = detail::open_or_create_dir(dir);
  if (options.lock) {
    int f = ::openat(w->dirfd.get(), "LOCK", O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    const bool created = f < 0 && errno == ENOENT;
    if (created)
      f = ::openat(w->dirfd.get(), "LOCK", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, static_cast<mode_t>(options.file_mode));
    if (f < 0) detail::throw_errno(errno, dir, "cannot open LOCK");
    w->lockfd = Fd(f);
    if (::flock(f, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      detail::throw_errno(err, dir, err == EWOULDBLOCK ? "another Writer holds LOCK" : "flock of LOCK failed");
    }
    if (created) detail::sync_dir(w->dirfd.get(), dir);  // every file the journal makes is named durably
  }
  w->buf = std::make_unique<std::byte[]>(options.buffer_bytes);
  w->recover();
  w->synced = w->end;
  w->recovery.end_position = w->end;
  return Writer(std::move(w));
}

void Writer::append(std::uint64_t position, std::uint64_t producer, std::uint64_t seq, std::uint64_t timestamp_ns,
                    std::span<const std::byte> key, std::span<const std::byte> payload) {
  Impl& w = *impl_;
  w.check_usable();
  if (position < w.end)
    detail::throw_error(std::errc::invalid_argument, w.dir,
                        "append at position " + std::to_string(position) + " below end_position " +
                            std::to_string(w.end) + ": positions must increase");
  if (position == kNoPosition) detail::throw_error(std::errc::invalid_argument, w.dir, "append at position 2^64-1");
  if (key.size() > kMaxRecordBytes - kHeaderBytes || payload.size() > kMaxRecordBytes - kHeaderBytes - key.size())
    detail::throw_error(std::errc::message_size, w.dir,
                        "record at position " + std::to_string(position) + " larger than 1 GiB");
  const std::uint64_t padded = align_record(kHeaderBytes + key.size() + payload.size());
  w.io([&] {
    if (w.fd.valid() && w.file_records > 0 && w.file_bytes + padded + kHeaderBytes > w.opt.segment_bytes) w.roll(position);
    if (!w.fd.valid()) w.start_file(w.next_file_first.value_or(position));
    w.put(position, producer, seq, timestamp_ns, key, payload, 0);
    ++w.file_records;
    w.end = position + 1;
  });
}

void Writer::sync() {
  Impl& w = *impl_;
  w.check_usable();
  if (w.synced == w.end) return;
  w.io([&] {
    w.flush();
    w.datasync();
    w.synced = w.end;
  });
}

void Writer::write_out() {
  Impl& w = *impl_;
  w.check_usable();
  w.io([&] { w.flush(); });
}

void Writer::truncate(std::uint64_t position) {
  Impl& w = *impl_;
  w.check_usable();
  w.io([&] { w.drop_from(position); });
}

void Writer::close() {
  Impl& w = *impl_;
  w.check_usable();
  sync();
  w.fd.reset();
  w.lockfd.reset();
  w.closed = true;
}

void Writer::forget_after_fork() noexcept {
  if (!impl_) return;
  impl_->buf_used = 0;  // the parent writes these bytes, not us
  impl_->fd.reset();    // close(2) only: the flock belongs to the open file description, which the
  impl_->lockfd.reset();  // parent's descriptor keeps (and keeps locked)
  impl_->dirfd.reset();
  impl_->closed = true;
}

std::uint64_t Writer::end_position() const noexcept { return impl_->end; }
std::uint64_t Writer::synced_position() const noexcept { return impl_->synced; }
const RecoveryReport& Writer::recovery() const noexcept { return impl_->recovery; }
const std::filesystem::path& Writer::dir() const noexcept { return impl_->dir; }

}  // namespace shmq::journal
