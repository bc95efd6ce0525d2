// Writes the seed corpora of the fuzz targets: fuzz_seeds DIR (DIR = tests/fuzz/corpus).
#include <shmq/shmq.hpp>

#include <random>

#include "fuzz_support.hpp"
#include "journal/journal.hpp"

using namespace shmq;
using namespace shmq::fuzz;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  const fs::path out = argv[1];
  for (const char* t : {"journal_fuzz", "segment_fuzz", "recovery_fuzz"}) fs::create_directories(out / t);

  // journal_fuzz: real journals of 1 to 3 files, in the target's input format.
  std::mt19937_64 rng(42);
  for (int seed = 0; seed < 6; ++seed) {
    const fs::path dir = scratch_dir("seeds");
    {
      journal::WriterOptions o;
      o.segment_bytes = 1024;
      o.buffer_bytes = 256;
      journal::Writer w = journal::Writer::open(dir / "j", o);
      std::uint64_t pos = rng() % 512 * 8;
      for (int i = 0; i < 4 + seed * 6; ++i) {
        const std::string key = i % 3 ? "" : "key" + std::to_string(i);
        const std::string payload(rng() % 200, static_cast<char>('a' + i % 26));
        w.append(pos, 1 + rng() % 3, 1 + static_cast<std::uint64_t>(i), rng(),
                 {reinterpret_cast<const std::byte*>(key.data()), key.size()},
                 {reinterpret_cast<const std::byte*>(payload.data()), payload.size()});
        pos += journal::align_record(journal::kHeaderBytes + key.size() + payload.size()) + 8 * (rng() % 4);
      }
      w.close();
    }
    std::vector<fs::path> logs;
    for (const auto& e : fs::directory_iterator(dir / "j"))
      if (e.path().extension() == ".log") logs.push_back(e.path());
    std::sort(logs.begin(), logs.end());
    std::string input;
    for (const auto& p : logs) {
      const std::uint64_t name = std::stoull(p.stem().string());
      input.append(reinterpret_cast<const char*>(&name), 8);
      input += read_file(p);
      input += "SQFILE\n\n";
    }
    write_file(out / "journal_fuzz" / ("journal-" + std::to_string(seed)), input);
    fs::remove_all(dir);
  }

  // segment_fuzz: no patch (the template as it is), and a few small patches.
  write_file(out / "segment_fuzz" / "none", "");
  for (int seed = 0; seed < 8; ++seed) {
    std::string input;
    for (int i = 0; i < 1 + seed % 3; ++i) {
      const std::uint32_t off = static_cast<std::uint32_t>(rng() % (80 << 10));
      const std::uint8_t len = 8;
      input.append(reinterpret_cast<const char*>(&off), 4);
      input.push_back(static_cast<char>(len));
      for (int b = 0; b < len; ++b) input.push_back(static_cast<char>(rng()));
    }
    write_file(out / "segment_fuzz" / ("patch-" + std::to_string(seed)), input);
  }

  // recovery_fuzz: the template journal untouched; cut; appended to; a byte changed (CRC fixed).
  write_file(out / "recovery_fuzz" / "none", std::string(1, '\0'));
  for (int seed = 0; seed < 8; ++seed) {
    std::string input(1, static_cast<char>(seed == 7 ? 1 : 0));
    input.push_back(static_cast<char>(seed));                      // file
    const std::uint32_t off = static_cast<std::uint32_t>(rng() % 2048);
    input.append(reinterpret_cast<const char*>(&off), 4);
    input.push_back(static_cast<char>(4));                         // length
    for (int b = 0; b < 4; ++b) input.push_back(static_cast<char>(rng()));
    input.push_back(static_cast<char>(seed % 4));                  // overwrite / truncate / append
    write_file(out / "recovery_fuzz" / ("patch-" + std::to_string(seed)), input);
  }
  return 0;
}
