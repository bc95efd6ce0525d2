// The journal: record framing, round trips across segment files, recovery of torn tails (cut at
// every byte, like leveldb's log tests), corruption in the middle found and never cut, file modes
// and symlinks, the writer lock, checkpoints, retention, verify.
#include "journal/journal.hpp"

#include <shmq/shmq.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace shmq::journal {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Every byte offset is tried (1); raise to try every Nth only, should the suite get slow.
constexpr int kScale = 1;

// ---- helpers ---------------------------------------------------------------------------------

std::span<const std::byte> bytes_of(const std::string& s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }
std::string string_of(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

struct Rec {
  std::uint64_t position, producer, seq, timestamp_ns;
  std::string key, payload;
  std::uint64_t padded() const { return align_record(kHeaderBytes + key.size() + payload.size()); }
  bool operator==(const Rec&) const = default;
};
std::ostream& operator<<(std::ostream& os, const Rec& r) {
  return os << "{pos " << r.position << ", producer " << r.producer << ", seq " << r.seq << ", key " << r.key.size()
            << " B, payload " << r.payload.size() << " B}";
}

std::string random_string(std::mt19937_64& rng, std::size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

Rec random_rec(std::mt19937_64& rng, std::uint64_t position, std::size_t max_payload, std::size_t max_key = 40) {
  return Rec{position, rng() % 8, rng() % 100000, rng(), random_string(rng, rng() % (max_key + 1)),
             random_string(rng, rng() % (max_payload + 1))};
}

void append(Writer& w, const Rec& r) {
  w.append(r.position, r.producer, r.seq, r.timestamp_ns, bytes_of(r.key), bytes_of(r.payload));
}

std::vector<Rec> read_all(const fs::path& dir, std::uint64_t from = 0, ReadReport* report = nullptr) {
  Reader reader = Reader::open(dir, from);
  std::vector<Rec> out;
  RecordView v;
  while (reader.next(v)) out.push_back({v.position, v.producer, v.seq, v.timestamp_ns, string_of(v.key), string_of(v.payload)});
  if (report) *report = reader.report();
  return out;
}

template <class F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}
void flip_byte(const fs::path& p, std::uint64_t offset, unsigned char mask = 0xff) {
  std::string s = read_file(p);
  s[offset] = static_cast<char>(static_cast<unsigned char>(s[offset]) ^ mask);
  write_file(p, s);
}

std::vector<std::string> segment_names(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".log") out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}
std::uint64_t first_of(const std::string& name) { return std::stoull(name.substr(0, 20)); }

// A directory under /tmp, removed at the end of the test; the journal lives in its "j" subdirectory
// (which the Writer creates).
class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shmq-journal-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    dir_ = root_ / "j";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Writes N random records (payload up to MAX_PAYLOAD) with increasing positions from 1000.
  std::vector<Rec> write_journal(std::size_t n, std::size_t max_payload, const WriterOptions& o, std::uint64_t seed = 1) {
    std::mt19937_64 rng(seed);
    std::vector<Rec> recs;
    Writer w = Writer::open(dir_, o);
    std::uint64_t pos = 1000;
    for (std::size_t i = 0; i < n; ++i) {
      recs.push_back(random_rec(rng, pos, max_payload));
      append(w, recs.back());
      pos += 1 + rng() % 100;
    }
    w.close();
    return recs;
  }

  // The segment files of the journal, by name, to put back with restore().
  std::map<std::string, std::string> snapshot() const {
    std::map<std::string, std::string> files;
    for (const auto& n : segment_names(dir_)) files[n] = read_file(dir_ / n);
    return files;
  }
  void restore(const std::map<std::string, std::string>& files) const {
    fs::remove_all(dir_);
    fs::create_directory(dir_);
    for (const auto& [name, bytes] : files) write_file(dir_ / name, bytes);
  }

  // Records of the model in the file whose name is FIRST and whose successor's is NEXT.
  static std::vector<Rec> records_in(const std::vector<Rec>& all, std::uint64_t first, std::uint64_t next = kNoPosition) {
    std::vector<Rec> out;
    for (const auto& r : all)
      if (r.position >= first && r.position < next) out.push_back(r);
    return out;
  }

  fs::path root_;
  fs::path dir_;
};

WriterOptions small_segments(std::uint64_t segment_bytes = 1024) {
  WriterOptions o;
  o.segment_bytes = segment_bytes;
  return o;
}

// ---- record framing ----------------------------------------------------------------------------

std::vector<std::byte> encode(const Rec& r, std::uint32_t flags = 0) {
  std::vector<std::byte> b(r.padded());
  encode_header(b.data(), r.position, r.producer, r.seq, r.timestamp_ns, static_cast<std::uint32_t>(r.key.size()),
                static_cast<std::uint32_t>(r.payload.size()), flags);
  std::memcpy(b.data() + kHeaderBytes, r.key.data(), r.key.size());
  std::memcpy(b.data() + kHeaderBytes + r.key.size(), r.payload.data(), r.payload.size());
  seal_crc(b.data());
  return b;
}

TEST(RecordFormat, DecodeReturnsTheFieldsThatWereEncoded) {
  const Rec r{123456789, 7, 42, 99, "key", "payload bytes"};
  const auto b = encode(r);
  ASSERT_EQ(b.size() % 8, 0u);
  const Decoded d = decode(b, 123456789);
  ASSERT_EQ(d.kind, Decoded::Ok) << d.why;
  EXPECT_EQ(d.size, b.size());
  EXPECT_EQ(d.record.position, r.position);
  EXPECT_EQ(d.record.producer, r.producer);
  EXPECT_EQ(d.record.seq, r.seq);
  EXPECT_EQ(d.record.timestamp_ns, r.timestamp_ns);
  EXPECT_EQ(d.record.flags, 0u);
  EXPECT_EQ(string_of(d.record.key), r.key);
  EXPECT_EQ(string_of(d.record.payload), r.payload);
}

TEST(RecordFormat, EveryPrefixOfARecordIsIncompleteNeverOk) {
  const auto b = encode(Rec{1, 2, 3, 4, "k", std::string(100, 'x')});
  for (std::size_t n = 0; n < b.size(); ++n) {
    const Decoded d = decode(std::span(b).first(n));
    ASSERT_EQ(d.kind, Decoded::Incomplete) << "prefix " << n;
    EXPECT_EQ(d.size, n < kHeaderBytes ? kHeaderBytes : b.size());
    EXPECT_EQ(d.header_valid, n >= kHeaderBytes);
  }
}

TEST(RecordFormat, LengthsAreValidatedBeforeUse) {
  const Rec r{50, 1, 1, 1, "abc", "defgh"};
  auto with = [&](std::size_t field_offset, std::uint32_t value) {
    auto b = encode(r);
    std::memcpy(b.data() + field_offset, &value, sizeof value);
    return decode(b);
  };
  EXPECT_EQ(with(4, 0).kind, Decoded::Corrupt);                       // length 0 (a zeroed tail)
  EXPECT_EQ(with(4, kHeaderBytes - 1).kind, Decoded::Corrupt);        // shorter than its header
  EXPECT_EQ(with(4, kMaxRecordBytes + 1).kind, Decoded::Corrupt);     // beyond the maximum
  EXPECT_EQ(with(4, 0xffffffffu).kind, Decoded::Corrupt);
  EXPECT_EQ(with(40, 9).kind, Decoded::Corrupt);                      // key longer than key + payload
  EXPECT_EQ(with(40, 0xffffffffu).kind, Decoded::Corrupt);
  EXPECT_EQ(with(44, 2).kind, Decoded::Corrupt);                      // unknown flag
  EXPECT_EQ(with(44, kFlagSeal).kind, Decoded::Corrupt);              // a seal with a payload
  EXPECT_EQ(with(4, 1u << 20).kind, Decoded::Incomplete);             // plausible length, bytes missing
  EXPECT_EQ(decode(encode(r), 51).kind, Decoded::Corrupt);            // position below the minimum
  EXPECT_EQ(decode(encode(Rec{kNoPosition, 1, 1, 1, "", ""})).kind, Decoded::Corrupt);
}

TEST(RecordFormat, EveryBitFlipIsDetected) {
  const auto good = encode(Rec{777, 3, 9, 12345, "some key", "a payload of some length!"});
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      auto b = good;
      b[i] ^= std::byte{static_cast<unsigned char>(1u << bit)};
      EXPECT_NE(decode(b).kind, Decoded::Ok) << "byte " << i << " bit " << bit;
    }
  }
}

// ---- round trips -------------------------------------------------------------------------------

TEST_F(JournalTest, RoundTripsRecordsOfEverySizeFrom0To64KiBAcrossSegmentFiles) {
  WriterOptions o = small_segments(64 << 10);
  std::mt19937_64 rng(11);
  std::vector<Rec> recs;
  std::vector<std::size_t> sizes = {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 4095, 4096, 4097, 65535, 65536};
  for (int i = 0; i < 200; ++i) sizes.push_back(rng() % 2 ? rng() % 512 : rng() % (64 << 10));
  {
    Writer w = Writer::open(dir_, o);
    std::uint64_t pos = 0;
    for (const std::size_t n : sizes) {
      Rec r = random_rec(rng, pos, 0);
      r.payload = random_string(rng, n);
      recs.push_back(r);
      append(w, r);
      pos += r.padded() + rng() % 3 * 8;  // like ring positions: byte offsets, with gaps
    }
    w.sync();
    EXPECT_EQ(w.synced_position(), w.end_position());
    EXPECT_EQ(w.end_position(), recs.back().position + 1);
  }
  ReadReport rep;
  EXPECT_EQ(read_all(dir_, 0, &rep), recs);
  const auto names = segment_names(dir_);
  EXPECT_GE(names.size(), 20u);
  EXPECT_EQ(rep.files, names.size());
  EXPECT_EQ(rep.end_position, recs.back().position + 1);
  EXPECT_EQ(rep.torn_bytes, 0u);
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::uint64_t next = i + 1 < names.size() ? first_of(names[i + 1]) : kNoPosition;
    const auto in = records_in(recs, first_of(names[i]), next);
    ASSERT_FALSE(in.empty()) << names[i];
    EXPECT_EQ(in.front().position, first_of(names[i])) << "a file is named by its first record";
    if (in.size() > 1) {
      EXPECT_LE(fs::file_size(dir_ / names[i]), o.segment_bytes) << names[i];
    }
  }
}

TEST_F(JournalTest, RecordsLargerThanTheBufferAreWrittenDirectly) {
  WriterOptions o;
  o.buffer_bytes = 1024;
  o.segment_bytes = 32 << 10;
  std::mt19937_64 rng(5);
  std::vector<Rec> recs;
  {
    Writer w = Writer::open(dir_, o);
    for (std::uint64_t i = 0; i < 100; ++i) {
      recs.push_back(random_rec(rng, 10 * i, i % 3 == 0 ? 10000 : 100));
      append(w, recs.back());
    }
    w.close();
  }
  EXPECT_EQ(read_all(dir_), recs);
}

TEST_F(JournalTest, SegmentFilesAreNamedByTheirFirstPositionZeroPaddedTo20Digits) {
  {
    Writer w = Writer::open(dir_, small_segments(1024));
    const std::string payload(600, 'p');
    for (const std::uint64_t pos : {5ull, 9999ull, 123456789012ull, 18446744073709551614ull})
      w.append(pos, 1, 1, 1, {}, bytes_of(payload));
    w.close();
  }
  EXPECT_EQ(segment_names(dir_), (std::vector<std::string>{"00000000000000000005.log", "00000000000000009999.log",
                                                            "00000000123456789012.log", "18446744073709551614.log"}));
}

TEST_F(JournalTest, ReopenResumesAtEndPosition) {
  const auto recs = write_journal(50, 300, small_segments());
  Writer w = Writer::open(dir_, small_segments());
  EXPECT_EQ(w.end_position(), recs.back().position + 1);
  EXPECT_EQ(w.synced_position(), w.end_position());
  EXPECT_EQ(w.recovery().records, recs.size());
  EXPECT_EQ(w.recovery().dropped_bytes, 0u);
  EXPECT_TRUE(w.recovery().truncated_file.empty());
  auto all = recs;
  std::mt19937_64 rng(2);
  for (int i = 0; i < 30; ++i) {
    all.push_back(random_rec(rng, w.end_position() + static_cast<std::uint64_t>(i), 300));
    append(w, all.back());
  }
  w.close();
  EXPECT_EQ(read_all(dir_), all);
}

TEST_F(JournalTest, TheDestructorWritesOutTheBuffer) {
  std::vector<Rec> recs;
  {
    Writer w = Writer::open(dir_);
    std::mt19937_64 rng(3);
    for (std::uint64_t i = 0; i < 10; ++i) {
      recs.push_back(random_rec(rng, i, 100));
      append(w, recs.back());
    }
  }
  EXPECT_EQ(read_all(dir_), recs);
}

TEST_F(JournalTest, AppendAtOrBelowTheLastPositionThrowsAndChangesNothing) {
  Writer w = Writer::open(dir_);
  w.append(100, 1, 1, 1, {}, {});
  for (const std::uint64_t bad : {100ull, 99ull, 0ull}) {
    const auto e = error_of([&] { w.append(bad, 1, 2, 2, {}, {}); });
    ASSERT_TRUE(e) << bad;
    EXPECT_EQ(e->code(), std::errc::invalid_argument);
    EXPECT_NE(std::string(e->what()).find("below end_position 101"), std::string::npos) << e->what();
  }
  EXPECT_EQ(w.end_position(), 101u);
  w.append(101, 1, 3, 3, {}, {});  // still usable
  w.close();
  const auto recs = read_all(dir_);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].position, 101u);
}

TEST_F(JournalTest, SyncBringsSyncedPositionToEndPosition) {
  Writer w = Writer::open(dir_, small_segments(1024));
  EXPECT_EQ(w.synced_position(), 0u);
  w.append(10, 1, 1, 1, {}, bytes_of("x"));
  EXPECT_EQ(w.end_position(), 11u);
  EXPECT_EQ(w.synced_position(), 0u);
  w.sync();
  EXPECT_EQ(w.synced_position(), 11u);
  const std::string big(700, 'b');
  w.append(20, 1, 2, 1, {}, bytes_of(big));
  w.append(30, 1, 3, 1, {}, bytes_of(big));  // does not fit: the first file is sealed and made durable
  EXPECT_EQ(w.synced_position(), 30u);
  EXPECT_EQ(w.end_position(), 31u);
  w.sync();
  EXPECT_EQ(w.synced_position(), 31u);
}

// After a failed fdatasync the journaler goes back to the durable position: at every cut point
// (record boundaries, inside a file, at a file's name, past the end), exactly the records below it
// remain, the journal reads clean and appending from there continues it.
TEST_F(JournalTest, TruncateDropsEveryRecordAtOrAboveThePositionAndAppendsGoOnFromThere) {
  const auto recs = write_journal(60, 200, small_segments());
  const auto files = snapshot();
  ASSERT_GE(segment_names(dir_).size(), 4u);
  std::vector<std::uint64_t> cuts{0, 500, recs.back().position + 1, recs.back().position + 100};
  for (const Rec& r : recs) cuts.push_back(r.position);
  for (const auto& n : segment_names(dir_)) cuts.push_back(first_of(n));
  for (const std::uint64_t cut : cuts) {
    restore(files);
    {
      Writer w = Writer::open(dir_, small_segments());
      w.truncate(cut);
      EXPECT_LE(w.end_position(), cut) << cut;
      EXPECT_EQ(w.synced_position(), w.end_position());
      const std::uint64_t next = std::max(cut, w.end_position());
      w.append(next, 9, 9, 9, {}, bytes_of("after the cut"));
      w.close();
    }
    auto expect = records_in(recs, 0, cut);
    const auto got = read_all(dir_);
    ASSERT_EQ(got.size(), expect.size() + 1) << "cut at " << cut;
    for (std::size_t i = 0; i < expect.size(); ++i) ASSERT_EQ(got[i], expect[i]) << "cut at " << cut;
    EXPECT_EQ(got.back().payload, "after the cut");
    EXPECT_EQ(Writer::open(dir_, small_segments()).recovery().dropped_bytes, 0u) << "cut at " << cut;
  }
}

TEST_F(JournalTest, ReaderStartsAtTheFirstRecordAtOrAfterAPosition) {
  const auto recs = write_journal(200, 200, small_segments());
  std::vector<std::uint64_t> froms = {0, recs.front().position, recs.back().position, recs.back().position + 1};
  for (std::size_t i = 1; i < recs.size(); i += 13) {
    froms.push_back(recs[i].position);
    froms.push_back(recs[i].position - 1);
    froms.push_back(recs[i].position + 1);
  }
  for (const auto& n : segment_names(dir_)) froms.push_back(first_of(n));
  for (const std::uint64_t from : froms) {
    std::vector<Rec> expect;
    for (const auto& r : recs)
      if (r.position >= from) expect.push_back(r);
    ReadReport rep;
    EXPECT_EQ(read_all(dir_, from, &rep), expect) << "from " << from;
    EXPECT_EQ(rep.end_position, recs.back().position + 1);
  }
}

// ---- torn tails: cut and reported ----------------------------------------------------------------

TEST_F(JournalTest, CutAtEveryByteOfTheLastRecordsKeepsEveryRecordBeforeTheCut) {
  const auto recs = write_journal(60, 150, small_segments(2048));
  const auto files = snapshot();
  const std::string last = files.rbegin()->first;
  const auto in_last = records_in(recs, first_of(last));
  ASSERT_GE(in_last.size(), 4u);
  std::vector<std::uint64_t> ends = {0};  // record boundaries in the last file
  for (const auto& r : in_last) ends.push_back(ends.back() + r.padded());
  ASSERT_EQ(ends.back(), files.rbegin()->second.size());
  const std::size_t kept_before = recs.size() - in_last.size();

  const std::uint64_t from = ends[in_last.size() - 4];
  for (std::uint64_t cut = from; cut <= ends.back(); cut += kScale) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    restore(files);
    fs::resize_file(dir_ / last, cut);
    const std::size_t whole = static_cast<std::size_t>(std::upper_bound(ends.begin(), ends.end(), cut) - ends.begin() - 1);
    const std::uint64_t boundary = ends[whole];

    ReadReport rep;
    std::vector<Rec> expect(recs.begin(), recs.begin() + static_cast<std::ptrdiff_t>(kept_before + whole));
    ASSERT_EQ(read_all(dir_, 0, &rep), expect);
    EXPECT_EQ(rep.torn_bytes, cut - boundary);

    Writer w = Writer::open(dir_, small_segments(2048));
    const RecoveryReport& rr = w.recovery();
    EXPECT_EQ(rr.dropped_bytes, cut - boundary);
    EXPECT_EQ(rr.dropped_records, cut - boundary >= kHeaderBytes ? 1u : 0u);
    EXPECT_EQ(rr.truncated_file, cut > boundary ? last : "");
    EXPECT_EQ(fs::file_size(dir_ / last), boundary);
    EXPECT_EQ(w.end_position(), whole > 0 ? in_last[whole - 1].position + 1 : first_of(last));
    // The writer carries on from there.
    const Rec more{w.end_position() + 3, 1, 1, 1, "k", "after the cut"};
    append(w, more);
    w.close();
    expect.push_back(more);
    ASSERT_EQ(read_all(dir_), expect);
  }
}

TEST_F(JournalTest, ZerosAfterTheLastRecordAreCutAndReported) {
  const auto recs = write_journal(20, 100, small_segments());
  const std::string last = segment_names(dir_).back();
  const auto size = fs::file_size(dir_ / last);
  fs::resize_file(dir_ / last, size + 4096);  // what a crash can leave: the length grew, the data did not land
  Writer w = Writer::open(dir_);
  EXPECT_EQ(w.recovery().dropped_bytes, 4096u);
  EXPECT_EQ(w.recovery().dropped_records, 0u);
  EXPECT_EQ(w.recovery().truncated_at, size);
  EXPECT_NE(w.recovery().what.find("offset " + std::to_string(size)), std::string::npos) << w.recovery().what;
  EXPECT_EQ(fs::file_size(dir_ / last), size);
  w.close();
  EXPECT_EQ(read_all(dir_), recs);
}

TEST_F(JournalTest, GarbageAfterTheLastRecordIsCutAndReported) {
  const auto recs = write_journal(20, 100, small_segments());
  const auto files = snapshot();
  const std::string last = files.rbegin()->first;
  std::mt19937_64 rng(9);
  for (int i = 0; i < 200 / kScale; ++i) {
    restore(files);
    const std::size_t n = 1 + rng() % 3000;
    write_file(dir_ / last, files.at(last) + random_string(rng, n));
    Writer w = Writer::open(dir_);
    EXPECT_EQ(w.recovery().dropped_bytes, n) << "iteration " << i;
    w.close();
    ASSERT_EQ(read_all(dir_), recs) << "iteration " << i;
  }
}

TEST_F(JournalTest, FlippingAnyByteOfTheLastRecordCutsItAsATornTail) {
  const auto recs = write_journal(30, 100, small_segments());
  const auto files = snapshot();
  const std::string last = files.rbegin()->first;
  const std::uint64_t size = files.at(last).size();
  const std::uint64_t start = size - recs.back().padded();
  for (std::uint64_t off = start; off < size; ++off) {
    SCOPED_TRACE("flipped byte at offset " + std::to_string(off));
    restore(files);
    flip_byte(dir_ / last, off);
    Writer w = Writer::open(dir_);
    EXPECT_EQ(w.recovery().dropped_bytes, recs.back().padded());
    EXPECT_LE(w.recovery().dropped_records, 1u);
    w.close();
    ASSERT_EQ(read_all(dir_), std::vector<Rec>(recs.begin(), recs.end() - 1));
  }
}

// ---- corruption in the middle: found, named, never cut -----------------------------------------

// Flips every byte of the record at OFFSET..OFFSET+LEN of FILE and checks that the writer, the
// reader and verify all refuse, naming FILE and LOST_FROM, and that nothing was cut.
void expect_corruption_everywhere(const fs::path& dir, const std::string& file, std::uint64_t offset, std::uint64_t len,
                                  std::uint64_t lost_from, const std::function<void()>& restore) {
  for (std::uint64_t off = offset; off < offset + len; off += static_cast<std::uint64_t>(kScale)) {
    SCOPED_TRACE(file + ": flipped byte at offset " + std::to_string(off));
    restore();
    flip_byte(dir / file, off);
    const std::string mutated = read_file(dir / file);

    const auto e = error_of([&] { Writer::open(dir); });
    ASSERT_TRUE(e) << "open accepted a corrupt journal";
    EXPECT_EQ(e->code(), std::errc::illegal_byte_sequence);
    const std::string what = e->what();
    EXPECT_NE(what.find(file), std::string::npos) << what;
    EXPECT_NE(what.find("position >= " + std::to_string(lost_from)), std::string::npos) << what;
    EXPECT_EQ(read_file(dir / file), mutated) << "open must not cut a corrupt middle";

    Reader reader = Reader::open(dir);
    RecordView v;
    const auto re = error_of([&] {
      while (reader.next(v)) {
      }
    });
    ASSERT_TRUE(re) << "the reader accepted a corrupt journal";
    EXPECT_EQ(reader.report().first_bad_position, lost_from);

    const VerifyReport vr = verify(dir);
    EXPECT_FALSE(vr.ok);
    EXPECT_EQ(vr.first_bad_position, lost_from);
    EXPECT_NE(vr.what.find(file), std::string::npos) << vr.what;
  }
}

TEST_F(JournalTest, FlippingAnyByteOfAMiddleRecordOfTheLastFileIsCorruptionNamingThePosition) {
  const auto recs = write_journal(30, 100, small_segments());
  const auto files = snapshot();
  const std::string last = files.rbegin()->first;
  const auto in_last = records_in(recs, first_of(last));
  ASSERT_GE(in_last.size(), 3u);
  const std::uint64_t offset = in_last[0].padded();  // the second record: valid records follow it
  expect_corruption_everywhere(dir_, last, offset, in_last[1].padded(), in_last[0].position + 1,
                               [&] { restore(files); });
}

TEST_F(JournalTest, FlippingAnyByteOfARecordOrTheSealOfAnEarlierFileIsCorruption) {
  const auto recs = write_journal(30, 100, small_segments());
  const auto files = snapshot();
  ASSERT_GE(files.size(), 3u);
  const std::string first = files.begin()->first;
  const std::string second = std::next(files.begin())->first;
  const auto in_first = records_in(recs, first_of(first), first_of(second));
  ASSERT_GE(in_first.size(), 2u);
  // Its last data record, then its seal.
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i + 1 < in_first.size(); ++i) offset += in_first[i].padded();
  expect_corruption_everywhere(dir_, first, offset, in_first.back().padded(),
                               in_first[in_first.size() - 2].position + 1, [&] { restore(files); });
  offset += in_first.back().padded();
  ASSERT_EQ(offset + kHeaderBytes, files.at(first).size());
  expect_corruption_everywhere(dir_, first, offset, kHeaderBytes, in_first.back().position + 1,
                               [&] { restore(files); });
}

TEST_F(JournalTest, GarbageBetweenRecordsOfTheLastFileIsCorruption) {
  const auto recs = write_journal(30, 100, small_segments());
  const auto files = snapshot();
  const std::string last = files.rbegin()->first;
  const auto in_last = records_in(recs, first_of(last));
  const std::string& bytes = files.at(last);
  const std::size_t at = in_last[0].padded();
  for (const std::size_t n : {8u, 48u, 100u, 1000u}) {
    restore(files);
    write_file(dir_ / last, bytes.substr(0, at) + std::string(n, '\x5a') + bytes.substr(at));
    const auto e = error_of([&] { Writer::open(dir_); });
    ASSERT_TRUE(e) << n << " bytes inserted";
    EXPECT_NE(std::string(e->what()).find("not a torn tail"), std::string::npos) << e->what();
  }
}

TEST_F(JournalTest, CuttingAnEarlierFileAnywhereIsCorruptionNotATornTail) {
  const auto recs = write_journal(30, 100, small_segments());
  const auto files = snapshot();
  const std::string first = files.begin()->first;
  const std::uint64_t size = files.at(first).size();
  for (std::uint64_t cut = 0; cut < size; cut += static_cast<std::uint64_t>(kScale)) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    restore(files);
    fs::resize_file(dir_ / first, cut);
    const auto e = error_of([&] { read_all(dir_); });
    ASSERT_TRUE(e) << "a cut earlier file read as whole";
    EXPECT_NE(std::string(e->what()).find(first), std::string::npos) << e->what();
    if (cut % 97 == 0) {
      EXPECT_TRUE(error_of([&] { Writer::open(dir_); }));
    }
  }
  (void)recs;
}

TEST_F(JournalTest, AMissingSegmentInTheMiddleIsCorruption) {
  write_journal(40, 100, small_segments());
  const auto names = segment_names(dir_);
  ASSERT_GE(names.size(), 3u);
  fs::remove(dir_ / names[1]);
  const auto e = error_of([&] { read_all(dir_); });
  ASSERT_TRUE(e);
  EXPECT_NE(std::string(e->what()).find("missing"), std::string::npos) << e->what();
  EXPECT_TRUE(error_of([&] { Writer::open(dir_); }));
}

TEST_F(JournalTest, ACrashBetweenSealingAFileAndCreatingTheNextResumes) {
  const auto recs = write_journal(40, 100, small_segments());
  const auto names = segment_names(dir_);
  const std::uint64_t lost_first = first_of(names.back());
  fs::remove(dir_ / names.back());  // as if the new file never reached the disk
  std::vector<Rec> kept;
  for (const auto& r : recs)
    if (r.position < lost_first) kept.push_back(r);
  ReadReport rep;
  EXPECT_EQ(read_all(dir_, 0, &rep), kept);
  EXPECT_TRUE(rep.last_file_sealed);
  EXPECT_EQ(rep.end_position, lost_first);
  {
    Writer w = Writer::open(dir_, small_segments());
    EXPECT_EQ(w.end_position(), lost_first);
    EXPECT_TRUE(w.recovery().truncated_file.empty());
    kept.push_back(Rec{lost_first + 50, 1, 1, 1, "", "first after the crash"});
    append(w, kept.back());
    w.close();
  }
  // The new file takes the name the seal promised; its first record may come later.
  EXPECT_EQ(segment_names(dir_).back(), names.back());
  EXPECT_EQ(read_all(dir_), kept);
  EXPECT_TRUE(verify(dir_).ok);
}

TEST_F(JournalTest, AnEmptyLastFileResumesAtItsName) {
  const auto recs = write_journal(40, 100, small_segments());
  const auto names = segment_names(dir_);
  fs::resize_file(dir_ / names.back(), 0);
  Writer w = Writer::open(dir_, small_segments());
  EXPECT_EQ(w.end_position(), first_of(names.back()));
  EXPECT_TRUE(error_of([&] { w.append(first_of(names.back()) - 1, 1, 1, 1, {}, {}); }));
  w.append(first_of(names.back()), 1, 1, 1, {}, {});
  w.close();
  const auto got = read_all(dir_);
  EXPECT_EQ(got.back().position, first_of(names.back()));
  (void)recs;
}

TEST_F(JournalTest, WithoutVerifyOnOpenOnlyTheLastTwoFilesAreRead) {
  const auto recs = write_journal(60, 100, small_segments());
  const auto names = segment_names(dir_);
  ASSERT_GE(names.size(), 4u);
  flip_byte(dir_ / names[0], 20);
  WriterOptions o = small_segments();
  o.verify_on_open = false;
  {
    Writer w = Writer::open(dir_, o);
    EXPECT_EQ(w.end_position(), recs.back().position + 1);
    EXPECT_EQ(w.recovery().records, records_in(recs, first_of(names[names.size() - 2])).size());
  }
  EXPECT_TRUE(error_of([&] { Writer::open(dir_); }));
}

// ---- files -------------------------------------------------------------------------------------

unsigned mode_of(const fs::path& p) {
  struct stat st;
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

TEST_F(JournalTest, TheDirectoryIs0700AndFilesAre0600ByDefault) {
  write_journal(40, 100, small_segments());
  EXPECT_EQ(mode_of(dir_), 0700u);
  EXPECT_EQ(mode_of(dir_ / "LOCK"), 0600u);
  for (const auto& n : segment_names(dir_)) EXPECT_EQ(mode_of(dir_ / n), 0600u) << n;
}

TEST_F(JournalTest, TheConfiguredFileModeIsAppliedWhateverTheUmask) {
  const mode_t old = ::umask(077);
  WriterOptions o = small_segments();
  o.file_mode = 0640;
  write_journal(40, 100, o);
  ::umask(old);
  for (const auto& n : segment_names(dir_)) EXPECT_EQ(mode_of(dir_ / n), 0640u) << n;
}

TEST_F(JournalTest, ASymlinkPlantedAtTheNextSegmentNameIsRefused) {
  Writer w = Writer::open(dir_, small_segments(1024));
  const std::string payload(600, 'p');
  w.append(100, 1, 1, 1, {}, bytes_of(payload));
  const fs::path victim = root_ / "victim";
  write_file(victim, "");
  fs::create_symlink(victim, dir_ / "00000000000000000200.log");
  const auto e = error_of([&] { w.append(200, 1, 2, 1, {}, bytes_of(payload)); });  // needs a new file
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), std::errc::file_exists);
  EXPECT_NE(std::string(e->what()).find("00000000000000000200.log"), std::string::npos) << e->what();
  EXPECT_EQ(fs::file_size(victim), 0u) << "the symlink was followed";
  EXPECT_TRUE(error_of([&] { w.sync(); })) << "a failed Writer must stay failed";
  // Readers refuse it too.
  const auto re = error_of([&] { read_all(dir_); });
  ASSERT_TRUE(re);
  EXPECT_EQ(re->code(), std::errc::too_many_symbolic_link_levels);
  EXPECT_EQ(fs::file_size(victim), 0u);
}

TEST_F(JournalTest, ASecondWriterOnTheSameDirectoryIsRefused) {
  Writer w = Writer::open(dir_);
  const auto e = error_of([&] { Writer::open(dir_); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), std::errc::resource_unavailable_try_again);
  w.close();
  EXPECT_FALSE(error_of([&] { Writer::open(dir_); }));
}

TEST_F(JournalTest, OpenRefusesBadOptionsAndAMissingParent) {
  WriterOptions o;
  o.segment_bytes = 10;
  EXPECT_EQ(error_of([&] { Writer::open(dir_, o); })->code(), std::errc::invalid_argument);
  const auto e = error_of([&] { Writer::open(root_ / "no" / "such"); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), std::errc::no_such_file_or_directory);
  EXPECT_NE(std::string(e->what()).find((root_ / "no" / "such").string()), std::string::npos) << e->what();
}

// ---- verify ------------------------------------------------------------------------------------

TEST_F(JournalTest, VerifyCountsRecordsFilesAndBytesAndReportsProgress) {
  const auto recs = write_journal(100, 100, small_segments());
  std::uint64_t bytes = 0;
  for (const auto& n : segment_names(dir_)) bytes += fs::file_size(dir_ / n);
  std::vector<VerifyProgress> calls;
  const VerifyReport v = verify(dir_, [&](const VerifyProgress& p) { calls.push_back(p); });
  EXPECT_TRUE(v.ok) << v.what;
  EXPECT_EQ(v.records, recs.size());
  EXPECT_EQ(v.files, segment_names(dir_).size());
  EXPECT_EQ(v.bytes, bytes);
  EXPECT_EQ(v.end_position, recs.back().position + 1);
  EXPECT_FALSE(v.first_bad_position);
  EXPECT_GE(calls.size(), v.files);
  EXPECT_EQ(calls.back().records, recs.size());
}

TEST_F(JournalTest, VerifyReportsATornTailAsReadable) {
  write_journal(10, 100, small_segments());
  const auto last = dir_ / segment_names(dir_).back();
  fs::resize_file(last, fs::file_size(last) - 3);
  const VerifyReport v = verify(dir_);
  EXPECT_TRUE(v.ok);
  EXPECT_GT(v.torn_bytes, 0u);
  EXPECT_NE(v.what.find("torn"), std::string::npos) << v.what;
  EXPECT_FALSE(verify(root_ / "missing").ok);
}

// ---- checkpoints -------------------------------------------------------------------------------

TEST_F(JournalTest, ACheckpointRoundTrips) {
  std::mt19937_64 rng(4);
  for (const std::size_t n : {0u, 1u, 100u, 100000u}) {
    const std::string s = random_string(rng, n);
    write_checkpoint(dir_, "groups", bytes_of(s));
    const auto got = read_checkpoint(dir_, "groups");
    ASSERT_TRUE(got);
    EXPECT_EQ(string_of(*got), s);
  }
  EXPECT_EQ(mode_of(dir_ / "groups"), 0600u);
  EXPECT_FALSE(read_checkpoint(dir_, "absent"));
}

TEST_F(JournalTest, ACheckpointIsReplacedAtomicallyAndALeftoverTmpIsIgnored) {
  write_checkpoint(dir_, "producers", bytes_of("version one"));
  write_file(dir_ / "producers.tmp", "half a checkp");  // a crash in the middle of the next write
  EXPECT_EQ(string_of(*read_checkpoint(dir_, "producers")), "version one");
  write_checkpoint(dir_, "producers", bytes_of("version two"));
  EXPECT_EQ(string_of(*read_checkpoint(dir_, "producers")), "version two");
  EXPECT_FALSE(fs::exists(dir_ / "producers.tmp"));
}

TEST_F(JournalTest, ACorruptOrTornCheckpointIsDetectedNotTakenForMissing) {
  write_checkpoint(dir_, "groups", bytes_of("cursor state, acks and so on"));
  const std::string good = read_file(dir_ / "groups");
  for (std::size_t i = 0; i < good.size(); ++i) {
    write_file(dir_ / "groups", good);
    flip_byte(dir_ / "groups", i, 0x10);
    const auto e = error_of([&] { read_checkpoint(dir_, "groups"); });
    ASSERT_TRUE(e) << "flip at " << i;
    EXPECT_EQ(e->code(), std::errc::illegal_byte_sequence);
    EXPECT_NE(std::string(e->what()).find("groups"), std::string::npos);
  }
  for (std::size_t n = 0; n < good.size(); ++n) {
    write_file(dir_ / "groups", good.substr(0, n));
    EXPECT_TRUE(error_of([&] { read_checkpoint(dir_, "groups"); })) << "cut at " << n;
  }
  write_file(dir_ / "groups", good + "x");
  EXPECT_TRUE(error_of([&] { read_checkpoint(dir_, "groups"); }));
}

TEST_F(JournalTest, CheckpointNamesThatCouldCollideWithTheJournalAreRefused) {
  for (const char* bad : {"", ".hidden", "LOCK", "a.log", "a.tmp", "a/b", "../x", "a b"}) {
    const auto e = error_of([&] { write_checkpoint(dir_, bad, bytes_of("x")); });
    ASSERT_TRUE(e) << bad;
    EXPECT_EQ(e->code(), std::errc::invalid_argument) << bad;
  }
}

// ---- retention ---------------------------------------------------------------------------------

void set_age(const fs::path& p, std::chrono::seconds age) {
  timespec t[2];
  t[0].tv_sec = t[1].tv_sec = ::time(nullptr) - static_cast<time_t>(age.count());
  t[0].tv_nsec = t[1].tv_nsec = 0;
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), t, 0), 0);
}

TEST_F(JournalTest, RetentionDeletesExactlyTheFilesAllOfWhoseRecordsAreBelowThePosition) {
  const auto recs = write_journal(60, 100, small_segments());
  const auto names = segment_names(dir_);
  ASSERT_GE(names.size(), 5u);
  // Just below the third file's name: only the first file is wholly below.
  auto del = delete_segments_before(dir_, first_of(names[2]) - 1, 0s, UINT64_MAX);
  EXPECT_EQ(del, (std::vector<fs::path>{dir_ / names[0]}));
  del = delete_segments_before(dir_, first_of(names[2]), 0s, UINT64_MAX);
  EXPECT_EQ(del, (std::vector<fs::path>{dir_ / names[1]}));
  EXPECT_EQ(segment_names(dir_), std::vector<std::string>(names.begin() + 2, names.end()));
  // What remains still reads, from its first record on.
  std::vector<Rec> rest;
  for (const auto& r : recs)
    if (r.position >= first_of(names[2])) rest.push_back(r);
  EXPECT_EQ(read_all(dir_), rest);
  EXPECT_TRUE(verify(dir_).ok);
}

TEST_F(JournalTest, RetentionNeverDeletesTheLastFile) {
  write_journal(60, 100, small_segments());
  const auto names = segment_names(dir_);
  const auto del = delete_segments_before(dir_, UINT64_MAX, 0s, 0);
  EXPECT_EQ(del.size(), names.size() - 1);
  EXPECT_EQ(segment_names(dir_), std::vector<std::string>{names.back()});
  EXPECT_TRUE(delete_segments_before(dir_, UINT64_MAX, 0s, 0).empty());
  // And the writer carries on.
  Writer w = Writer::open(dir_, small_segments());
  w.append(w.end_position(), 1, 1, 1, {}, {});
  w.close();
  EXPECT_TRUE(verify(dir_).ok);
}

TEST_F(JournalTest, RetentionKeepsYoungFilesUnlessTheJournalIsOverItsSize) {
  write_journal(60, 100, small_segments());
  const auto names = segment_names(dir_);
  ASSERT_GE(names.size(), 5u);
  for (const auto& n : names) set_age(dir_ / n, 10s);
  set_age(dir_ / names[0], 2h);
  set_age(dir_ / names[2], 2h);
  // By age: the first file only; the second is young, and only a prefix is ever deleted.
  EXPECT_EQ(delete_segments_before(dir_, UINT64_MAX, 1h, UINT64_MAX), (std::vector<fs::path>{dir_ / names[0]}));
  // By size: young files go while the journal is over the limit.
  std::uint64_t total = 0;
  for (std::size_t i = 1; i < names.size(); ++i) total += fs::file_size(dir_ / names[i]);
  const std::uint64_t limit = total - fs::file_size(dir_ / names[1]) - 1;  // deleting names[1] is not quite enough
  EXPECT_EQ(delete_segments_before(dir_, UINT64_MAX, 1h, limit),
            (std::vector<fs::path>{dir_ / names[1], dir_ / names[2]}));
  EXPECT_TRUE(delete_segments_before(dir_, UINT64_MAX, 1h, UINT64_MAX).empty());
}


// ---- previous checkpoint versions and the durable mark ----------------------------------------

TEST_F(JournalTest, ThePreviousCheckpointIsKeptAndReadWhenTheNewestIsDamaged) {
  write_checkpoint(dir_, "state", bytes_of("version one"));
  write_checkpoint(dir_, "state", bytes_of("version two"));
  auto v = read_checkpoint_versions(dir_, "state");
  ASSERT_TRUE(v[0].bytes && v[1].bytes);
  EXPECT_EQ(string_of(*v[0].bytes), "version two");
  EXPECT_EQ(string_of(*v[1].bytes), "version one");
  EXPECT_EQ(mode_of(dir_ / "state.prev"), 0600u);
  const std::string good = read_file(dir_ / "state");
  // Appended bytes, a flipped byte, a cut: the newest is refused with its reason, the previous read.
  for (const std::string& bad : {good + "x", good.substr(0, good.size() - 1), std::string("SQCK")}) {
    write_file(dir_ / "state", bad);
    v = read_checkpoint_versions(dir_, "state");
    EXPECT_TRUE(v[0].exists);
    EXPECT_FALSE(v[0].bytes);
    EXPECT_NE(v[0].problem.find("state"), std::string::npos) << v[0].problem;
    ASSERT_TRUE(read_checkpoint(dir_, "state"));
    EXPECT_EQ(string_of(*read_checkpoint(dir_, "state")), "version one");
  }
  write_file(dir_ / "state", good);
  flip_byte(dir_ / "state", good.size() - 2, 0x01);
  EXPECT_EQ(string_of(*read_checkpoint(dir_, "state")), "version one");
  // Both damaged: an error naming both, never "missing".
  flip_byte(dir_ / "state.prev", 20, 0x01);
  const auto e = error_of([&] { read_checkpoint(dir_, "state"); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), std::errc::illegal_byte_sequence);
  EXPECT_NE(std::string(e->what()).find("state.prev"), std::string::npos) << e->what();
  // The next write replaces the damaged newest; the previous is then that damaged one, and the new
  // one reads.
  write_checkpoint(dir_, "state", bytes_of("version three"));
  EXPECT_EQ(string_of(*read_checkpoint(dir_, "state")), "version three");
  // Only the previous version left (a crash can not do that, an operator can): still read.
  fs::remove(dir_ / "state");
  write_checkpoint(dir_, "other", bytes_of("a"));
  write_checkpoint(dir_, "other", bytes_of("b"));
  fs::remove(dir_ / "other");
  EXPECT_EQ(string_of(*read_checkpoint(dir_, "other")), "a");
}

TEST_F(JournalTest, CheckpointNamesOfThePreviousVersionAndTheMarkAreRefused) {
  for (const char* bad : {"state.prev", "durable"}) {
    const auto e = error_of([&] { write_checkpoint(dir_, bad, bytes_of("x")); });
    ASSERT_TRUE(e) << bad;
    EXPECT_EQ(e->code(), std::errc::invalid_argument) << bad;
  }
}

TEST_F(JournalTest, TheDurableMarkRoundTripsAndADamagedOneReadsAsNone) {
  fs::create_directories(dir_);
  EXPECT_FALSE(read_durable_mark(dir_));
  ASSERT_TRUE(record_durable_mark(dir_, 12345));
  EXPECT_EQ(read_durable_mark(dir_), std::optional<std::uint64_t>(12345));
  ASSERT_TRUE(record_durable_mark(dir_, 7));
  EXPECT_EQ(read_durable_mark(dir_), std::optional<std::uint64_t>(7));
  EXPECT_EQ(mode_of(dir_ / "durable"), 0600u);
  for (std::size_t i = 0; i < kDurableMarkBytes; ++i) {
    ASSERT_TRUE(record_durable_mark(dir_, 99));
    flip_byte(dir_ / "durable", i, 0x04);
    EXPECT_FALSE(read_durable_mark(dir_)) << "flip at " << i;
  }
  EXPECT_FALSE(record_durable_mark(root_ / "missing" / "j", 1));
}

// A journal of N records and the mark its journaler would have left after its last sync.
std::vector<Rec> write_synced_journal(const fs::path& dir, std::size_t n, const WriterOptions& o) {
  std::mt19937_64 rng(9);
  std::vector<Rec> recs;
  Writer w = Writer::open(dir, o);
  std::uint64_t pos = 1000;
  for (std::size_t i = 0; i < n; ++i) {
    recs.push_back(random_rec(rng, pos, 60));
    append(w, recs.back());
    pos += recs.back().padded();
  }
  w.sync();
  EXPECT_TRUE(record_durable_mark(dir, w.end_position()));
  w.close();
  return recs;
}

TEST_F(JournalTest, ALastFileCutAtARecordBoundaryBelowTheDurableMarkIsLossNotSilence) {
  const auto recs = write_synced_journal(dir_, 40, small_segments(1 << 20));
  ASSERT_TRUE(verify(dir_).ok);
  const auto name = segment_names(dir_).back();
  // Cut exactly after record 30: every record left is whole, nothing torn.
  std::uint64_t cut = 0;
  for (int i = 0; i < 30; ++i) cut += recs[static_cast<std::size_t>(i)].padded();
  fs::resize_file(dir_ / name, cut);
  ReadReport rep;
  EXPECT_EQ(read_all(dir_, 0, &rep).size(), 30u);
  EXPECT_EQ(rep.torn_bytes, 0u);
  ASSERT_TRUE(rep.lost_from);
  EXPECT_EQ(*rep.lost_from, recs[29].position + 1);
  EXPECT_EQ(rep.durable_mark, std::optional<std::uint64_t>(recs.back().position + 1));
  EXPECT_NE(rep.lost_what.find("durable"), std::string::npos) << rep.lost_what;
  const VerifyReport v = verify(dir_);
  EXPECT_FALSE(v.ok) << v.what;
  EXPECT_EQ(v.first_bad_position, rep.lost_from);
  EXPECT_NE(v.what.find("lost"), std::string::npos) << v.what;
}

TEST_F(JournalTest, ADeletedLastFileThatTheSealBeforeItNamesIsLossNotSilence) {
  write_synced_journal(dir_, 60, small_segments());
  const auto names = segment_names(dir_);
  ASSERT_GE(names.size(), 3u);
  fs::remove(dir_ / names.back());
  ReadReport rep;
  read_all(dir_, 0, &rep);
  EXPECT_TRUE(rep.last_file_sealed);
  ASSERT_TRUE(rep.lost_from);
  EXPECT_EQ(*rep.lost_from, first_of(names.back()));
  EXPECT_NE(rep.lost_what.find(names.back()), std::string::npos) << rep.lost_what;
  EXPECT_FALSE(verify(dir_).ok);
  // All files deleted, the mark left: loss too.
  for (const auto& n : segment_names(dir_)) fs::remove(dir_ / n);
  EXPECT_FALSE(verify(dir_).ok);
}

TEST_F(JournalTest, ABitFlipInTheLastDurableRecordIsCorruptionNotATornTail) {
  const auto recs = write_synced_journal(dir_, 20, small_segments(1 << 20));
  const auto name = segment_names(dir_).back();
  const std::uint64_t size = fs::file_size(dir_ / name);
  flip_byte(dir_ / name, size - recs.back().padded() + kHeaderBytes, 0x01);  // a payload bit
  ReadReport rep;
  EXPECT_EQ(read_all(dir_, 0, &rep).size(), 19u);
  EXPECT_EQ(rep.torn_bytes, 0u) << "durable bytes are never a torn tail";
  ASSERT_TRUE(rep.lost_from);
  EXPECT_EQ(*rep.lost_from, recs[18].position + 1);
  EXPECT_EQ(rep.lost_bytes, recs.back().padded());
  EXPECT_NE(rep.lost_what.find("not a torn tail"), std::string::npos) << rep.lost_what;
  EXPECT_FALSE(verify(dir_).ok);
}

TEST_F(JournalTest, BytesAfterTheDurableMarkAreStillATornTail) {
  const auto recs = write_synced_journal(dir_, 20, small_segments(1 << 20));
  // A record appended after the last sync (never synced, so not in the mark), then cut.
  {
    Writer w = Writer::open(dir_, small_segments(1 << 20));
    append(w, Rec{recs.back().position + 1000, 1, 1, 1, "", std::string(200, 'x')});
    w.close();
  }
  const auto name = segment_names(dir_).back();
  fs::resize_file(dir_ / name, fs::file_size(dir_ / name) - 20);
  ReadReport rep;
  EXPECT_EQ(read_all(dir_, 0, &rep).size(), 20u);
  EXPECT_FALSE(rep.lost_from) << rep.lost_what;
  EXPECT_GT(rep.torn_bytes, 0u);
  const VerifyReport v = verify(dir_);
  EXPECT_TRUE(v.ok) << v.what;
  EXPECT_GT(v.torn_bytes, 0u);
}
}  // namespace
}  // namespace shmq::journal
