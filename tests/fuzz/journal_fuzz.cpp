// libFuzzer target: the journal reader, verify() and the Writer's recovery over journal files the
// fuzzer writes.
//
// Input: files separated by the 8 bytes "SQFILE\n\n"; each file starts with a u64 whose low 63 bits
// name it ("%020llu.log", the position of its first record) and whose top bit, when set, leaves
// the file's CRCs as the fuzzer made them; otherwise every plausible record has its CRC fixed up.
//
// Invariants, beyond "no crash, no hang, no out-of-bounds access" (ASan+UBSan):
//   - the reader returns records in strictly increasing position order, each at or above its start;
//   - verify() never throws, and agrees with the reader: ok exactly when the reader read to the end
//     without finding corruption, with the same record count;
//   - Writer::open (which cuts a torn tail) never drops a record the reader returned: reading again
//     after it yields at least those records, unchanged.
#include <shmq/shmq.hpp>

#include <cinttypes>

#include "fuzz_support.hpp"
#include "journal/journal.hpp"

namespace {

using namespace shmq;
using namespace shmq::fuzz;

struct Seen {
  std::uint64_t position, producer, seq, timestamp_ns;
  std::string key, payload;
  bool operator==(const Seen&) const = default;
};

// Reads DIR from the start: the records, and whether it ended cleanly (false: Error).
bool read_all(const fs::path& dir, std::vector<Seen>& out) {
  try {
    journal::Reader r = journal::Reader::open(dir, 0);
    journal::RecordView v;
    std::uint64_t last = 0;
    bool first = true;
    for (std::size_t guard = 0; guard < 1'000'000; ++guard) {
      if (!r.next(v)) return true;
      SHMQ_FUZZ_CHECK(first || v.position > last);
      first = false;
      last = v.position;
      out.push_back(Seen{v.position, v.producer, v.seq, v.timestamp_ns,
                         std::string(reinterpret_cast<const char*>(v.key.data()), v.key.size()),
                         std::string(reinterpret_cast<const char*>(v.payload.data()), v.payload.size())});
    }
    fail("more records than the input could hold");
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fs::path dir = scratch_dir("journal") / "j";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);

  Bytes in(data, size);
  for (int files = 0; files < 6 && !in.empty(); ++files) {
    std::string_view chunk = in.take_until("SQFILE\n\n");
    if (chunk.size() < 8) continue;
    std::uint64_t head;
    std::memcpy(&head, chunk.data(), 8);
    std::string bytes(chunk.substr(8));
    if (!(head >> 63)) fix_up_records(bytes);
    char name[32];
    std::snprintf(name, sizeof name, "%020" PRIu64 ".log", head & ~(std::uint64_t{1} << 63));
    write_file(dir / name, bytes);
  }

  std::vector<Seen> first;
  const bool clean = read_all(dir, first);

  const journal::VerifyReport v = journal::verify(dir);
  SHMQ_FUZZ_CHECK(v.ok == clean);
  if (clean) SHMQ_FUZZ_CHECK(v.records == first.size());

  // The Writer's recovery cuts only what is not a record: the records read above survive it.
  try {
    journal::WriterOptions o;
    o.segment_bytes = 4096;
    o.buffer_bytes = 256;
    journal::Writer w = journal::Writer::open(dir, o);
    w.close();
  } catch (const Error&) {
    return 0;  // refused (corruption it will not cut): nothing was changed, nothing more to check
  }
  std::vector<Seen> again;
  read_all(dir, again);
  SHMQ_FUZZ_CHECK(again.size() >= first.size());
  for (std::size_t i = 0; i < first.size(); ++i) SHMQ_FUZZ_CHECK(again[i] == first[i]);
  return 0;
}
