// The key store of KeyedConsumer: keys survive a reopen; a torn tail is cut at every byte; a
// damaged record that valid ones follow is skipped and reported, also while another process has
// the file open; a file that is not a store is refused; the store is bounded and compacted, also
// while in use; processes that share it see each other's keys.
#include "journal/key_store.hpp"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "support.hpp"

namespace shmq::test {
namespace {

namespace fs = std::filesystem;
using journal::KeyStore;
using journal::KeyStoreOptions;

class KeyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { path_ = dir_ / "keys"; }
  std::vector<char> bytes() const {
    std::ifstream in(path_, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void write(const std::vector<char>& b) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  }
  TestDir tmp_{"keys", true};
  const fs::path& dir_ = tmp_.path();
  fs::path path_;
};

std::string key_of(int i) { return "order-" + std::to_string(i); }

TEST_F(KeyStoreTest, KeysSurviveAReopenAndTheFileHasTheStoresMode) {
  {
    KeyStore s = KeyStore::open(path_);
    for (int i = 0; i < 100; ++i) s.add(key_of(i));
    s.add(key_of(5));  // already there: nothing appended
    EXPECT_EQ(s.file_records(), 100u);
  }
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  KeyStore s = KeyStore::open(path_);
  EXPECT_EQ(s.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(s.contains(key_of(i))) << i;
  EXPECT_FALSE(s.contains(key_of(100)));
  EXPECT_FALSE(s.contains(""));
  s.add("");  // the empty key is a key
  EXPECT_TRUE(s.contains(""));
}

TEST_F(KeyStoreTest, ATornTailIsCutAtEveryByteAndTheWholeRecordsStay) {
  {
    KeyStore s = KeyStore::open(path_);
    for (int i = 0; i < 5; ++i) s.add(key_of(i));
  }
  const std::vector<char> whole = bytes();
  const std::size_t last_record = journal::kKeyRecordHeaderBytes + key_of(4).size();
  for (std::size_t cut = whole.size() - last_record; cut < whole.size(); ++cut) {
    write(std::vector<char>(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(cut)));
    KeyStore s = KeyStore::open(path_);
    EXPECT_EQ(s.size(), 4u) << "cut at " << cut;
    EXPECT_FALSE(s.contains(key_of(4)));
    EXPECT_EQ(s.torn_bytes(), cut - (whole.size() - last_record)) << "cut at " << cut;
    s.add(key_of(4));  // appended after the cut, not after the torn bytes
  }
  KeyStore s = KeyStore::open(path_);
  EXPECT_EQ(s.size(), 5u);
  EXPECT_EQ(s.torn_bytes(), 0u);
}

TEST_F(KeyStoreTest, ADamagedRecordThatValidOnesFollowIsSkippedAndReported) {
  {
    KeyStore s = KeyStore::open(path_);
    for (int i = 0; i < 5; ++i) s.add(key_of(i));
  }
  std::vector<char> b = bytes();
  const std::size_t second = journal::kKeyStoreHeaderBytes + journal::kKeyRecordHeaderBytes + key_of(0).size();
  b[second + journal::kKeyRecordHeaderBytes + 2] ^= 0x20;  // a byte of the second key
  write(b);
  KeyStore s = KeyStore::open(path_);
  EXPECT_EQ(s.size(), 4u);
  EXPECT_FALSE(s.contains(key_of(1))) << "its key is forgotten: at worst handled once more";
  for (int i : {0, 2, 3, 4}) EXPECT_TRUE(s.contains(key_of(i))) << i;
  EXPECT_EQ(s.first_damage(), second);
  EXPECT_EQ(s.damaged_bytes(), journal::kKeyRecordHeaderBytes + key_of(1).size());
  EXPECT_EQ(s.torn_bytes(), 0u);
}

// While another process has the store open, bad bytes might be its append half copied: they are
// skipped only once they have stayed bad for a second.
TEST_F(KeyStoreTest, DamageSeenWhileSharedIsSkippedOnceItStaysBad) {
  KeyStoreOptions o;
  o.sync = Durability::Memory;
  KeyStore a = KeyStore::open(path_, o);
  a.add(key_of(0));
  {
    // Garbage after the first record (a write cut short), then a whole record.
    std::ofstream out(path_, std::ios::binary | std::ios::app);
    out.write("\x01\x02\x03\x04\x05", 5);
  }
  KeyStore b = KeyStore::open(path_, o);  // shared: the garbage may be an append in progress
  b.add(key_of(1));
  EXPECT_FALSE(a.contains(key_of(1))) << "not skipped at once";
  std::this_thread::sleep_for(1100ms);
  EXPECT_TRUE(a.contains(key_of(1)));
  EXPECT_EQ(a.damaged_bytes(), 5u);
}

TEST_F(KeyStoreTest, AFileWhoseCreatorDiedBeforeTheHeaderWasWholeIsMadeAgain) {
  write({'S', 'H', 'M', 'Q'});  // the start of a header, and nothing else
  KeyStore s = KeyStore::open(path_);
  s.add(key_of(1));
  EXPECT_EQ(bytes().size(), journal::kKeyStoreHeaderBytes + journal::kKeyRecordHeaderBytes + key_of(1).size());
}

TEST_F(KeyStoreTest, AFileThatIsNotAKeyStoreIsRefused) {
  write({'n', 'o', 't', ' ', 'a', ' ', 'k', 'e', 'y', ' ', 's', 't', 'o', 'r', 'e', '!', '!'});
  EXPECT_THROW(KeyStore::open(path_), Error);
  EXPECT_EQ(bytes().size(), 17u);
  fs::create_directories(dir_ / "adir");
  EXPECT_THROW(KeyStore::open(dir_ / "adir"), Error);
  fs::create_symlink(path_, dir_ / "alink");
  EXPECT_THROW(KeyStore::open(dir_ / "alink"), Error) << "O_NOFOLLOW";
}

TEST_F(KeyStoreTest, OnlyTheNewestMaxKeysAreRememberedAndTheFileIsCompactedAtOpen) {
  KeyStoreOptions big;
  big.max_keys = 10000;  // no compaction while these are written
  big.sync = Durability::Memory;
  {
    KeyStore s = KeyStore::open(path_, big);
    for (int i = 0; i < 1000; ++i) s.add(key_of(i));
    EXPECT_EQ(s.file_records(), 1000u);
  }
  KeyStoreOptions o = big;
  o.max_keys = 100;
  KeyStore s = KeyStore::open(path_, o);  // alone, past twice max_keys: compacted
  EXPECT_EQ(s.file_records(), 100u);
  EXPECT_EQ(s.size(), 100u);
  EXPECT_FALSE(s.contains(key_of(899)));
  for (int i = 900; i < 1000; ++i) EXPECT_TRUE(s.contains(key_of(i))) << i;
  EXPECT_FALSE(fs::exists(path_.string() + ".tmp"));
}

// A store kept open by one process compacts itself as it goes; kept open by two, it waits until
// one of them is alone with it.
TEST_F(KeyStoreTest, AStoreInUseIsCompactedWhenItsUserIsAlone) {
  KeyStoreOptions o;
  o.max_keys = 100;
  o.sync = Durability::Memory;
  KeyStore s = KeyStore::open(path_, o);
  for (int i = 0; i < 1000; ++i) s.add(key_of(i));
  EXPECT_LE(s.file_records(), 300u) << "compacted while in use";
  EXPECT_LE(fs::file_size(path_), 400u * (journal::kKeyRecordHeaderBytes + 10));
  for (int i = 900; i < 1000; ++i) EXPECT_TRUE(s.contains(key_of(i))) << i;
  {
    KeyStore other = KeyStore::open(path_, o);  // shares it: no compaction meanwhile
    for (int i = 1000; i < 1600; ++i) s.add(key_of(i));
    EXPECT_GT(s.file_records(), 600u);
    EXPECT_TRUE(other.contains(key_of(1599)));
  }
  for (int i = 1600; i < 1700; ++i) s.add(key_of(i));  // alone again
  EXPECT_LE(s.file_records(), 300u);
  for (int i = 1600; i < 1700; ++i) EXPECT_TRUE(s.contains(key_of(i))) << i;
}

// Two processes share one store: each sees the keys the other adds, and none is lost or torn.
TEST_F(KeyStoreTest, ProcessesSharingAStoreSeeEachOthersKeys) {
  const int n = 2000;
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k)
    kids.push_back(fork_child([&, k] {
      KeyStoreOptions o;
      o.sync = Durability::Memory;
      KeyStore s = KeyStore::open(path_, o);
      for (int i = 0; i < n; ++i) s.add(key_of(k * n + i));
      // Wait until the other's keys are all visible.
      const auto until = Clock::now() + 20s;
      for (int i = 0; i < n; ++i)
        while (!s.contains(key_of((1 - k) * n + i))) {
          CHILD_CHECK(Clock::now() < until);
          ::usleep(1000);
        }
      return kChildOk;
    }));
  for (pid_t pid : kids) EXPECT_TRUE(wait_child(pid, 60s).ok());
  KeyStore s = KeyStore::open(path_);
  EXPECT_EQ(s.size(), 2u * n);
  EXPECT_EQ(s.file_records(), 2u * n);
}

}  // namespace
}  // namespace shmq::test
