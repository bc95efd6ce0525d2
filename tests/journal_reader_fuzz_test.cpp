// The journal reader against random and mutated bytes: bit flips, cuts, inserted garbage, zeroed
// ranges, deleted files. For a bounded number of iterations (and a time limit), it must never crash,
// hang or read outside its buffers (ASan), and whatever it returns must be a contiguous run of the
// records that were written, unchanged: a mutation either ends the journal (a torn tail, a deleted
// first or last file) or is reported as corruption; it never makes records vanish from the middle.
//
// Reproduce a failure with SHMQ_FUZZ_SEED=<the seed printed>.
#include "journal/journal.hpp"

#include <shmq/shmq.hpp>

#include <gtest/gtest.h>

#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace shmq::journal {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

#ifdef SHMQ_SANITIZED
constexpr int kIterations = 2000;
#else
constexpr int kIterations = 5000;
#endif
constexpr auto kTimeLimit = std::chrono::seconds(90);

std::uint64_t base_seed() {
  if (const char* s = std::getenv("SHMQ_FUZZ_SEED")) return std::stoull(s);
  return (std::uint64_t{std::random_device{}()} << 32) | std::random_device{}();
}

struct Rec {
  std::uint64_t position, producer, seq, timestamp_ns;
  std::string key, payload;
  bool operator==(const Rec&) const = default;
};
using Files = std::map<std::string, std::string>;

std::span<const std::byte> bytes_of(const std::string& s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }
std::string string_of(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }
std::string random_string(std::mt19937_64& rng, std::size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}
std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

class JournalReaderFuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shmq-journal-fuzz-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // A journal of random records in small files, written by the Writer; returns its files.
  Files make_journal(std::mt19937_64& rng, std::vector<Rec>& recs) {
    const fs::path dir = root_ / "base";
    fs::remove_all(dir);
    WriterOptions o;
    o.segment_bytes = 1024 + rng() % 2048;
    o.buffer_bytes = 64 + rng() % 1024;
    Writer w = Writer::open(dir, o);
    std::uint64_t pos = rng() % 1000;
    const std::size_t n = rng() % 40;
    for (std::size_t i = 0; i < n; ++i) {
      recs.push_back(Rec{pos, rng() % 4, rng(), rng(), random_string(rng, rng() % 20), random_string(rng, rng() % 300)});
      const Rec& r = recs.back();
      w.append(r.position, r.producer, r.seq, r.timestamp_ns, bytes_of(r.key), bytes_of(r.payload));
      pos += 1 + rng() % 500;
    }
    w.close();
    Files files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".log") files[e.path().filename().string()] = read_file(e.path());
    return files;
  }

  static void mutate(std::mt19937_64& rng, Files& files, std::string& what) {
    if (files.empty()) return;
    auto it = files.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(rng() % files.size()));
    std::string& b = it->second;
    const auto at = [&](std::size_t extra) { return static_cast<std::size_t>(rng() % (b.size() + extra)); };
    switch (rng() % 7) {
      case 0:
      case 1:
        if (b.empty()) return;
        {
          const std::size_t i = at(0);
          b[i] = static_cast<char>(b[i] ^ (1 << (rng() % 8)));
          what += " flip " + it->first + "@" + std::to_string(i);
        }
        break;
      case 2: {
        if (b.empty()) return;
        const std::size_t n = at(0);
        b.resize(n);
        what += " cut " + it->first + "@" + std::to_string(n);
        break;
      }
      case 3: {
        const std::size_t i = at(1);
        const std::size_t n = 1 + rng() % 100;
        b.insert(i, rng() % 2 ? random_string(rng, n) : std::string(n, '\0'));
        what += " insert " + std::to_string(n) + " " + it->first + "@" + std::to_string(i);
        break;
      }
      case 4: {
        const std::size_t n = 1 + rng() % 200;
        b += rng() % 2 ? random_string(rng, n) : std::string(n, '\0');
        what += " append " + std::to_string(n) + " " + it->first;
        break;
      }
      case 5: {
        if (b.empty()) return;
        const std::size_t i = at(0);
        const std::size_t n = std::min<std::size_t>(b.size() - i, 1 + rng() % 64);
        std::memset(b.data() + i, 0, n);
        what += " zero " + std::to_string(n) + " " + it->first + "@" + std::to_string(i);
        break;
      }
      case 6:
        what += " delete " + it->first;
        files.erase(it);
        break;
    }
  }

  fs::path root_;
};

// What the reader returned is a contiguous run of RECS, unchanged.
::testing::AssertionResult is_contiguous_run(const std::vector<Rec>& got, const std::vector<Rec>& recs) {
  if (got.empty()) return ::testing::AssertionSuccess();
  std::size_t i = 0;
  while (i < recs.size() && recs[i].position != got[0].position) ++i;
  for (std::size_t k = 0; k < got.size(); ++k, ++i) {
    if (i >= recs.size() || !(recs[i] == got[k]))
      return ::testing::AssertionFailure() << "record " << k << " (position " << got[k].position
                                           << ") is not the next record written";
  }
  return ::testing::AssertionSuccess();
}

TEST_F(JournalReaderFuzz, MutatedJournalsNeverCrashAndNeverLoseRecordsSilently) {
  const std::uint64_t seed = base_seed();
  std::printf("journal fuzz: SHMQ_FUZZ_SEED=%llu\n", static_cast<unsigned long long>(seed));
  std::fflush(stdout);  // printed before anything can crash
  const auto deadline = Clock::now() + kTimeLimit;
  std::mt19937_64 rng(seed);
  std::vector<std::pair<Files, std::vector<Rec>>> bases(8);
  for (auto& [files, recs] : bases) files = make_journal(rng, recs);

  const fs::path dir = root_ / "j";
  int iterations = 0, refused = 0, torn = 0;
  for (; iterations < kIterations && Clock::now() < deadline; ++iterations) {
    const auto& [base_files, recs] = bases[rng() % bases.size()];
    Files files = base_files;
    std::string what;
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int m = 0; m < mutations; ++m) mutate(rng, files, what);
    SCOPED_TRACE("SHMQ_FUZZ_SEED=" + std::to_string(seed) + ", iteration " + std::to_string(iterations) + ":" + what);

    fs::remove_all(dir);
    fs::create_directory(dir);
    for (const auto& [name, bytes] : files) write_file(dir / name, bytes);

    std::vector<Rec> got;
    bool threw = false;
    try {
      Reader reader = Reader::open(dir, 0);
      RecordView v;
      while (reader.next(v)) {
        got.push_back(Rec{v.position, v.producer, v.seq, v.timestamp_ns, string_of(v.key), string_of(v.payload)});
        ASSERT_LT(got.size(), 10000u) << "the reader does not stop";
      }
      torn += reader.report().torn_bytes > 0;
    } catch (const Error& e) {
      threw = true;
      ++refused;
      EXPECT_EQ(e.code(), std::errc::illegal_byte_sequence) << e.what();
    }
    EXPECT_TRUE(is_contiguous_run(got, recs));

    const VerifyReport vr = verify(dir);
    EXPECT_EQ(vr.ok, !threw) << vr.what;
    if (!threw) {
      EXPECT_EQ(vr.records, got.size());
    }

    // Every few iterations, the writer's recovery too (it fdatasyncs, so not every time).
    if (iterations % 8 == 0) {
      try {
        Writer w = Writer::open(dir);
        EXPECT_FALSE(threw) << "the writer accepted what the reader refused";
        const std::uint64_t end = w.end_position();
        if (!got.empty()) {
          EXPECT_GE(end, got.back().position + 1);  // more when the last file ends with a seal
        }
        w.append(end, 9, 9, 9, bytes_of("k"), bytes_of("appended after recovery"));
        w.close();
        const VerifyReport after = verify(dir);
        EXPECT_TRUE(after.ok) << after.what;
        EXPECT_EQ(after.records, got.size() + 1);
      } catch (const Error& e) {
        EXPECT_TRUE(threw) << "the writer refused what the reader accepted: " << e.what();
      }
    }
    if (HasFailure()) break;
  }
  std::printf("journal fuzz: %d iterations, %d refused as corrupt, %d with a torn tail\n", iterations, refused, torn);
  EXPECT_GE(iterations, 100);
}

TEST_F(JournalReaderFuzz, DecodeNeverReadsOutsideItsBytes) {
  const std::uint64_t seed = base_seed();
  SCOPED_TRACE("SHMQ_FUZZ_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 20000; ++i) {
    const std::size_t n = rng() % 200;
    auto buf = std::make_unique<std::byte[]>(n);  // exactly N bytes: ASan catches any read past them
    for (std::size_t k = 0; k < n; ++k) buf[k] = static_cast<std::byte>(rng());
    if (n >= 8 && rng() % 2) {
      const auto len = static_cast<std::uint32_t>(kHeaderBytes + rng() % 200);  // plausible length
      std::memcpy(buf.get() + 4, &len, 4);
    }
    if (n >= kHeaderBytes && rng() % 2) {
      const auto key = static_cast<std::uint32_t>(rng() % 16);
      std::memcpy(buf.get() + 40, &key, 4);
      std::memset(buf.get() + 44, 0, 4);
    }
    const Decoded d = decode(std::span<const std::byte>(buf.get(), n), rng() % 2 ? 0 : rng());
    if (d.kind == Decoded::Ok) {
      ASSERT_LE(d.size, n);
      ASSERT_LE(d.record.key.size() + d.record.payload.size() + kHeaderBytes, d.size);
    }
  }
}

}  // namespace
}  // namespace shmq::journal
