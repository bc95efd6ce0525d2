// The journal's on-disk record format. Everything that reads or writes a record goes through here.
//
// A journal is a directory of segment files. A segment file is named by the position of its first
// record, "%020llu.log" (so that name order is position order); precisely, the name is a lower
// bound that the previous file's seal fixed, equal to the first record's position except after a
// crash between sealing a file and writing the first record of the next. A file holds records
// back to back, each at an 8-byte aligned offset, with no file header:
//
//   0       4       8               16              24              32              40      44      48
//   +-------+-------+---------------+---------------+---------------+---------------+-------+-------+-----+---------+-----+
//   | crc   |length | position      | producer id   | seq           | timestamp ns  |key len| flags | key | payload | pad |
//   +-------+-------+---------------+---------------+---------------+---------------+-------+-------+-----+---------+-----+
//   |<----------------------------------------- length ----------------------------------------------------------->|
//           |<------------------------------------------------ covered by crc --------------------------------------------->|
//
//   crc       masked CRC32C (mask_crc) of every byte after the crc field up to the end of the padding
//   length    header + key + payload, not counting the padding; the record occupies align8(length)
//             bytes; kHeaderBytes <= length <= kMaxRecordBytes
//   position  the record's ring position: strictly increasing through the journal; never 2^64-1
//   key len   <= length - kHeaderBytes; the payload is what follows the key
//   flags     0 for a data record; kFlagSeal for the seal (below); other bits are refused
//   pad       zeros up to the next multiple of 8
//   All integers little-endian.
//
// The seal. When the writer starts a new file it first ends the current one with a seal: a record
// with flags = kFlagSeal, no key, no payload, position = the name of the next file (the position
// where the journal continues) and seq = the number of data records in the file it ends; then it
// makes that file durable and only then creates the next. So every file but the last ends with a
// seal naming its successor: a file cut at a record boundary, or a missing file in the middle, is
// found. Readers never return seals.
//
// Invariants a reader checks (anything else is corruption or, at the end of the last file only, a
// torn tail):
//   - the records of file N have positions >= N and below the name of the next file;
//   - positions strictly increase, within a file and across files;
//   - every file but the last ends with a seal whose position is the next file's name, and whose seq
//     counts the file's data records; nothing follows a seal.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>

namespace shmq::journal {

static_assert(std::endian::native == std::endian::little, "the journal format is little-endian");

inline constexpr std::size_t kHeaderBytes = 48;
inline constexpr std::size_t kRecordAlign = 8;
inline constexpr std::uint32_t kMaxRecordBytes = 1u << 30;  // header + key + payload
inline constexpr std::uint32_t kFlagSeal = 1u;
inline constexpr std::uint32_t kKnownFlags = kFlagSeal;
inline constexpr std::uint64_t kNoPosition = ~std::uint64_t{0};  // never a record's position

constexpr std::uint64_t align_record(std::uint64_t n) noexcept {
  return (n + kRecordAlign - 1) & ~std::uint64_t{kRecordAlign - 1};
}

// The header as laid out on disk (read and written with memcpy, never by casting file bytes).
struct RecordHeader {
  std::uint32_t crc;  // masked
  std::uint32_t length;
  std::uint64_t position;
  std::uint64_t producer;
  std::uint64_t seq;
  std::uint64_t timestamp_ns;
  std::uint32_t key_len;
  std::uint32_t flags;
};
static_assert(sizeof(RecordHeader) == kHeaderBytes);
static_assert(offsetof(RecordHeader, length) == 4 && offsetof(RecordHeader, position) == 8);
static_assert(offsetof(RecordHeader, timestamp_ns) == 32 && offsetof(RecordHeader, key_len) == 40);
static_assert(offsetof(RecordHeader, flags) == 44);

// A record as read: the spans point into the reader's buffer and live until its next call.
struct RecordView {
  std::uint64_t position = 0;
  std::uint64_t producer = 0;
  std::uint64_t seq = 0;
  std::uint64_t timestamp_ns = 0;
  std::uint32_t flags = 0;
  std::span<const std::byte> key;
  std::span<const std::byte> payload;
};

struct Decoded {
  enum Kind {
    Ok,          // record holds a whole, valid record; size is the bytes it occupies (padded)
    Incomplete,  // the header reads well but BYTES is shorter than the record: size is the bytes needed
    Corrupt,     // why says what is wrong
  } kind = Corrupt;
  RecordView record;
  std::size_t size = 0;
  const char* why = nullptr;  // Incomplete and Corrupt: a short phrase
  // The header passed every check that does not need the rest of the record (length, key length,
  // position, flags): a torn record rather than garbage, when the rest is missing or fails the CRC.
  bool header_valid = false;
};

// Decodes the record at the start of BYTES (any alignment: a reader looking for records after a
// bad spot tries every offset). Checks, in this order, before it reads anything they bound: that
// the header is there; length in [kHeaderBytes, kMaxRecordBytes]; key_len <= length - kHeaderBytes;
// MIN_POSITION <= position < kNoPosition; flags known (a seal has no key and no payload); then that
// the whole padded record is there; then the CRC. Never reads outside BYTES; never allocates.
Decoded decode(std::span<const std::byte> bytes, std::uint64_t min_position = 0) noexcept;

// Writes the header of a record at OUT (kHeaderBytes) with the CRC field 0; seal_crc() then fills
// it in once the key, payload and padding follow the header in memory.
void encode_header(std::byte* out, std::uint64_t position, std::uint64_t producer, std::uint64_t seq,
                   std::uint64_t timestamp_ns, std::uint32_t key_len, std::uint32_t payload_len,
                   std::uint32_t flags) noexcept;
// The masked CRC for a record whose bytes after the crc field are the concatenation of the PARTS
// (header from offset 4, key, payload, padding).
std::uint32_t record_crc(std::span<const std::span<const std::byte>> parts) noexcept;
// Stores the masked CRC of the padded record at RECORD (length align_record(length) bytes, contiguous).
void seal_crc(std::byte* record) noexcept;

}  // namespace shmq::journal
