// The key store of KeyedConsumer: keys survive a reopen; a torn tail is cut at every byte; a
// corrupt record that valid ones follow is an error naming its offset and changes nothing; the
// store is bounded and compacted; processes that share it see each other's keys.
#include "journal/key_store.hpp"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "support.hpp"

namespace shmq::test {
namespace {

namespace fs = std::filesystem;
using journal::KeyStore;
using journal::KeyStoreOptions;

class KeyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("shmq-keys-" + unique_name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = dir_ / "keys";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::vector<char> bytes() const {
    std::ifstream in(path_, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void write(const std::vector<char>& b) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  }
  fs::path dir_, path_;
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

TEST_F(KeyStoreTest, ACorruptRecordThatValidOnesFollowIsAnErrorNamingItsOffset) {
  {
    KeyStore s = KeyStore::open(path_);
    for (int i = 0; i < 5; ++i) s.add(key_of(i));
  }
  std::vector<char> b = bytes();
  const std::size_t second = journal::kKeyStoreHeaderBytes + journal::kKeyRecordHeaderBytes + key_of(0).size();
  b[second + 8] ^= 0x20;  // a byte of the second key
  write(b);
  try {
    KeyStore::open(path_);
    FAIL() << "a corrupt record was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path_.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("offset " + std::to_string(second)), std::string::npos) << e.what();
  }
  EXPECT_EQ(bytes(), b) << "nothing changed";
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

TEST_F(KeyStoreTest, OnlyTheNewestMaxKeysAreRememberedAndTheFileIsCompacted) {
  KeyStoreOptions o;
  o.max_keys = 100;
  o.sync = Durability::Memory;
  {
    KeyStore s = KeyStore::open(path_, o);
    for (int i = 0; i < 1000; ++i) s.add(key_of(i));
    EXPECT_EQ(s.size(), 100u);
    EXPECT_FALSE(s.contains(key_of(899)));
    EXPECT_TRUE(s.contains(key_of(900)));
    EXPECT_EQ(s.file_records(), 1000u);
  }
  KeyStore s = KeyStore::open(path_, o);  // alone: compacts
  EXPECT_EQ(s.file_records(), 100u);
  EXPECT_EQ(s.size(), 100u);
  for (int i = 900; i < 1000; ++i) EXPECT_TRUE(s.contains(key_of(i))) << i;
  EXPECT_FALSE(fs::exists(path_.string() + ".tmp"));
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
