#include "journal/format.hpp"

#include "journal/crc32c.hpp"

#include <cstring>

namespace shmq::journal {

Decoded decode(std::span<const std::byte> bytes, std::uint64_t min_position) noexcept {
  Decoded d;
  if (bytes.size() < kHeaderBytes) {
    d.kind = Decoded::Incomplete;
    d.size = kHeaderBytes;
    d.why = "record header cut short";
    return d;
  }
  RecordHeader h;
  std::memcpy(&h, bytes.data(), kHeaderBytes);
  if (h.length < kHeaderBytes || h.length > kMaxRecordBytes) {
    d.why = "record length out of range";
    return d;
  }
  if (h.key_len > h.length - kHeaderBytes) {
    d.why = "key length larger than the record";
    return d;
  }
  if (h.position < min_position) {
    d.why = "position lower than the journal has reached (positions must increase)";
    return d;
  }
  if (h.position == kNoPosition) {
    d.why = "position out of range";
    return d;
  }
  if ((h.flags & ~kKnownFlags) != 0) {
    d.why = "unknown flags (a newer format?)";
    return d;
  }
  if ((h.flags & kFlagSeal) != 0 && h.length != kHeaderBytes) {
    d.why = "seal record with a key or a payload";
    return d;
  }
  d.header_valid = true;
  const std::size_t padded = align_record(h.length);
  if (bytes.size() < padded) {
    d.kind = Decoded::Incomplete;
    d.size = padded;
    d.why = "record cut short";
    return d;
  }
  if (unmask_crc(h.crc) != crc32c(0, bytes.data() + 4, padded - 4)) {
    d.why = "checksum mismatch";
    return d;
  }
  d.kind = Decoded::Ok;
  d.size = padded;
  d.record.position = h.position;
  d.record.producer = h.producer;
  d.record.seq = h.seq;
  d.record.timestamp_ns = h.timestamp_ns;
  d.record.flags = h.flags;
  d.record.key = bytes.subspan(kHeaderBytes, h.key_len);
  d.record.payload = bytes.subspan(kHeaderBytes + h.key_len, h.length - kHeaderBytes - h.key_len);
  return d;
}

void encode_header(std::byte* out, std::uint64_t position, std::uint64_t producer, std::uint64_t seq,
                   std::uint64_t timestamp_ns, std::uint32_t key_len, std::uint32_t payload_len,
                   std::uint32_t flags) noexcept {
  const RecordHeader h{0, static_cast<std::uint32_t>(kHeaderBytes + key_len + payload_len), position, producer, seq,
                       timestamp_ns, key_len, flags};
  std::memcpy(out, &h, kHeaderBytes);
}

std::uint32_t record_crc(std::span<const std::span<const std::byte>> parts) noexcept {
  std::uint32_t c = 0;
  for (const auto& p : parts) c = crc32c(c, p.data(), p.size());
  return mask_crc(c);
}

void seal_crc(std::byte* record) noexcept {
  std::uint32_t length;
  std::memcpy(&length, record + 4, sizeof length);
  const std::uint32_t masked = mask_crc(crc32c(0, record + 4, align_record(length) - 4));
  std::memcpy(record, &masked, sizeof masked);
}

}  // namespace shmq::journal
