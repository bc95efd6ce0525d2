// KeyedConsumer with real processes, the downstream half of the story: consumers whose handler
// has a side effect (a line appended to a file) are SIGKILLed at chosen steps and at random; they
// are restarted until the group is drained; then the side effects are counted per key.
//   - killed after the key is recorded, before the ack: every side effect happens once;
//   - killed between the handler and the key: exactly one extra handler call per such kill;
//   - killed anywhere: nothing lost, at most one extra call per kill.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "journal/key_store.hpp"
#include "shm/channel_state.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

namespace fs = std::filesystem;

std::string key_of(int i) { return "order-" + std::to_string(i); }

// One message in this many is killed at: about 30 kills over N messages, whatever N (the
// sanitizer builds run a tenth of the messages), so that a run without any kill is unlikely.
std::uint64_t kills_one_in(int n) { return static_cast<std::uint64_t>(std::max(n / 30, 10)); }

struct Board {
  std::atomic<int> kills{0};        // children that killed themselves at a hook
  std::atomic<int> skipped{0};      // summed KeyedConsumer::skipped() of children that finished
};

Board* g_board = nullptr;
std::atomic<int> g_kill_stage{-1};
std::uint64_t g_kill_one_in = 0;
std::mt19937_64 g_rng;

void kill_sometimes(detail::KeyedStage stage) {
  if (static_cast<int>(stage) != g_kill_stage.load() || g_rng() % g_kill_one_in != 0) return;
  g_board->kills.fetch_add(1);
  ::raise(SIGKILL);
}

class KeyedConsumerTest : public ChannelTest {
 protected:
  void SetUp() override {
    board_ = static_cast<Board*>(::mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(board_, MAP_FAILED);
    new (board_) Board{};
    g_board = board_;
    seed_ = std::random_device{}();
    std::printf("seed %llu\n", static_cast<unsigned long long>(seed_));
  }
  void TearDown() override {
    ChannelTest::TearDown();
    ::munmap(board_, sizeof(Board));
  }
  ChannelOptions options() {
    ChannelOptions o = memory_options(8 << 20, 4096);
    o.liveness_interval = std::chrono::milliseconds(100);
    o.max_deliveries = 1000;  // a message killed on again and again must not go to NAME.dlq: the counts are exact
    return o;
  }
  // Publishes N keyed messages into a new channel; returns its name.
  std::string publish(int n) {
    const auto name = channel_name();
    auto ch = Channel::open(name, options());
    ch.ensure_group("workers");
    Producer p(ch, "orders");
    for (int i = 0; i < n; ++i) {
      PublishOptions po;
      const std::string key = key_of(i);
      po.key = key;
      EXPECT_EQ(p.publish("payload of " + key, po).status, Status::Ok);
    }
    return name;
  }
  // One consumer process: handles messages until the group has been quiet for a while. STAGE and
  // ONE_IN: it kills itself at that step of one message in ONE_IN.
  pid_t start_consumer(const std::string& name, int stage, std::uint64_t one_in, std::uint64_t seed) {
    return fork_child([=, this] {
      g_kill_stage = stage;
      g_kill_one_in = one_in;
      g_rng.seed(seed);
      detail::set_keyed_hook(&kill_sometimes);
      auto ch = Channel::open(name, options());
      KeyedConsumerOptions ko;
      ko.store = dir_ / "keys";
      ko.consumer.max_in_flight = 4;
      KeyedConsumer kc(ch, "workers", ko);
      const int out = ::open((dir_ / "effects").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
      CHILD_CHECK(out >= 0);
      auto side_effect = [&](const Message& m) {
        const std::string line = std::string(m.key()) + "\n";
        CHILD_CHECK(::write(out, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
        return true;
      };
      while (kc.process(side_effect, 500ms) != Handled::Nothing) {
      }
      board_->skipped.fetch_add(static_cast<int>(kc.skipped()));
      return kChildOk;
    });
  }
  // Runs two competing consumers at a time, restarting each one that dies, until the group is
  // drained. RANDOM_KILLS: also SIGKILL them from outside at random moments. Returns the kills
  // made from outside.
  int run_until_drained(const std::string& name, int stage, std::uint64_t one_in, bool random_kills) {
    std::mt19937_64 rng(seed_);
    int outside = 0;
    pid_t kids[2] = {start_consumer(name, stage, one_in, rng()), start_consumer(name, stage, one_in, rng())};
    const auto give_up = Clock::now() + 120s;
    for (;;) {
      EXPECT_LT(Clock::now(), give_up) << "the group was never drained (seed " << seed_ << ")";
      if (Clock::now() >= give_up) break;
      bool running = false;
      for (pid_t& k : kids) {
        if (k == 0) continue;
        if (random_kills && rng() % 40 == 0 && child_running(k)) {
          ::kill(k, SIGKILL);
          ++outside;
        }
        int status = 0;
        if (::waitpid(k, &status, WNOHANG) != k) {
          running = true;
          continue;
        }
        if (WIFEXITED(status)) {
          EXPECT_EQ(WEXITSTATUS(status), 0) << "a consumer failed (seed " << seed_ << ")";
          k = 0;
        } else {
          k = start_consumer(name, stage, one_in, rng());  // it died: another takes its place
          running = true;
        }
      }
      if (!running) break;
      std::this_thread::sleep_for(5ms);
    }
    return outside;
  }
  // Side effects per key, from the file.
  std::map<std::string, int> effects() const {
    std::map<std::string, int> times;
    std::ifstream in(dir_ / "effects");
    for (std::string line; std::getline(in, line);) ++times[line];
    return times;
  }
  // The handler calls of each of the N keys; a key never handled is a failure (nothing is lost).
  std::vector<int> calls_per_key(int n) const {
    const auto times = effects();
    EXPECT_EQ(times.size(), static_cast<std::size_t>(n)) << "keys handled (seed " << seed_ << ")";
    std::vector<int> calls(static_cast<std::size_t>(n), 0);
    for (int i = 0; i < n; ++i) {
      const auto it = times.find(key_of(i));
      if (it != times.end()) calls[static_cast<std::size_t>(i)] = it->second;
      EXPECT_GT(calls[static_cast<std::size_t>(i)], 0) << key_of(i) << " never handled (seed " << seed_ << ")";
    }
    return calls;
  }
  void expect_drained(const std::string& name) {
    auto ch = Channel::open(name, options());
    const ChannelStats st = ch.stats();
    ASSERT_EQ(st.groups.size(), 1u);
    EXPECT_EQ(st.groups[0].lag_messages, 0u) << "seed " << seed_;
    EXPECT_EQ(st.groups[0].in_flight, 0u) << "seed " << seed_;
  }

  TestDir tmp_{"keyed", true};
  const fs::path& dir_ = tmp_.path();
  Board* board_ = nullptr;
  std::uint64_t seed_ = 0;
};

TEST_F(KeyedConsumerTest, ASideEffectHappensOncePerKeyWhenConsumersDieBetweenTheKeyAndTheAck) {
  const int n = static_cast<int>(scaled(3000));
  const auto name = publish(n);
  run_until_drained(name, static_cast<int>(detail::KeyedStage::KeyRecorded), kills_one_in(n), false);
  expect_drained(name);
  std::printf("%d consumers killed between key and ack, %d redeliveries skipped\n", board_->kills.load(),
              board_->skipped.load());
  EXPECT_GT(board_->kills.load(), 0);
  const std::vector<int> calls = calls_per_key(n);
  for (int i = 0; i < n; ++i) EXPECT_EQ(calls[static_cast<std::size_t>(i)], 1) << key_of(i) << " (seed " << seed_ << ")";
}

TEST_F(KeyedConsumerTest, ADeathBetweenTheHandlerAndTheKeyCostsExactlyOneExtraCall) {
  const int n = static_cast<int>(scaled(3000));
  const auto name = publish(n);
  run_until_drained(name, static_cast<int>(detail::KeyedStage::HandlerDone), kills_one_in(n), false);
  expect_drained(name);
  int total = 0;
  for (int c : calls_per_key(n)) total += c;  // a message redelivered may be killed on again
  std::printf("%d consumers killed between handler and key, %d extra calls\n", board_->kills.load(), total - n);
  EXPECT_GT(board_->kills.load(), 0);
  EXPECT_EQ(total - n, board_->kills.load()) << "seed " << seed_;
}

TEST_F(KeyedConsumerTest, RandomKillsLoseNothingAndCostAtMostOneExtraCallEach) {
  const int n = static_cast<int>(scaled(3000));
  const auto name = publish(n);
  const int outside = run_until_drained(name, -1, 1, true);
  expect_drained(name);
  int total = 0;
  for (int c : calls_per_key(n)) total += c;
  std::printf("%d consumers killed at random, %d extra calls\n", outside, total - n);
  EXPECT_LE(total - n, outside) << "seed " << seed_;
}

// The same kills with a plain Consumer: the side effect happens again for every consumer killed
// between it and its ack. This is what KeyedConsumer is for, and shows the kills land there.
TEST_F(KeyedConsumerTest, APlainConsumerKilledBeforeItsAckRepeatsTheSideEffect) {
  const int n = static_cast<int>(scaled(1000));
  const auto name = publish(n);
  int kills = 0;
  for (int round = 0; round < 100; ++round) {
    const pid_t k = fork_child([&, round] {
      std::mt19937_64 rng(seed_ + static_cast<std::uint64_t>(round));
      auto ch = Channel::open(name, options());
      Consumer c(ch, "workers");
      const int out = ::open((dir_ / "effects").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
      while (auto m = c.poll(500ms)) {
        const std::string line = std::string(m->key()) + "\n";
        CHILD_CHECK(::write(out, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
        if (rng() % kills_one_in(n) == 0) ::raise(SIGKILL);  // the side effect is done, the ack is not
        CHILD_CHECK(c.ack(*m) == Status::Ok);
      }
      return kChildOk;
    });
    const ChildResult r = wait_child(k, 60s);
    if (r.ok()) break;
    ASSERT_TRUE(r.killed_by(SIGKILL)) << r.describe();
    ++kills;
  }
  ASSERT_GT(kills, 0);
  int total = 0;
  for (const auto& [key, times] : effects()) total += times;
  EXPECT_EQ(total - n, kills) << "each kill repeats one side effect";
}

// The default store lives in the channel's journal directory, which a Memory channel may not
// have made yet: the directories KeyedConsumer makes are the journal's (mode 0700 whatever the
// umask, each parent fsync'd after the mkdir so that the path survives a power loss), not
// std::filesystem's (0777 minus the umask, nothing synced): the keys say what was processed.
TEST_F(KeyedConsumerTest, TheDefaultStoresDirectoriesAreOwnerOnlyAndDurableWhateverTheUmask) {
  const auto name = channel_name();
  ChannelOptions o = options();
  o.journal_dir = dir_ / "made" / "by" / "keyed";
  auto ch = Channel::open(name, o);
  ch.ensure_group("g");
  const mode_t old_umask = ::umask(0);
  { KeyedConsumer kc(ch, "g"); }
  ::umask(old_umask);
  for (const std::filesystem::path& p : {dir_ / "made", dir_ / "made" / "by", o.journal_dir, o.journal_dir / name}) {
    struct stat st{};
    ASSERT_EQ(::stat(p.c_str(), &st), 0) << p;
    EXPECT_EQ(st.st_mode & 07777, 0700u) << p << " was made with mode " << std::oct << (st.st_mode & 07777);
  }
}

TEST_F(KeyedConsumerTest, AMessageWithoutAKeyIsRecognisedByItsInnerId) {
  const auto name = channel_name();
  auto ch = Channel::open(name, options());
  ch.ensure_group("g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("no key").status, Status::Ok);
  KeyedConsumerOptions ko;
  ko.store = dir_ / "keys";
  {
    KeyedConsumer kc(ch, "g", ko);
    auto m = kc.poll(1s);
    ASSERT_TRUE(m);
    EXPECT_FALSE(kc.processed(*m));
    // Recorded and acked.
    ASSERT_EQ(kc.done(*m), Status::Ok);
    EXPECT_TRUE(kc.processed(*m));
  }
  {
    KeyedConsumer kc(ch, "g", ko);
    EXPECT_FALSE(kc.poll(200ms)) << "nothing left: the message was acked";
  }
  // A redelivery (nack) of a message whose inner id is recorded is skipped.
  ASSERT_EQ(p.publish("second").status, Status::Ok);
  Consumer plain(ch, "g");
  auto m = plain.poll(1s);
  ASSERT_TRUE(m);
  {
    journal::KeyStore s = journal::KeyStore::open(ko.store);
    std::string k = "i";  // as KeyedConsumer makes it: 'i', the channel's incarnation, the inner id
    const InnerId id = m->id();
    const std::uint64_t incarnation = ch.state().header->incarnation;
    k.append(reinterpret_cast<const char*>(&incarnation), 8);
    k.append(reinterpret_cast<const char*>(&id.producer), 8).append(reinterpret_cast<const char*>(&id.seq), 8);
    s.add(k);
  }
  ASSERT_EQ(plain.nack(*m), Status::Ok);
  KeyedConsumer kc(ch, "g", ko);
  EXPECT_FALSE(kc.poll(300ms));
  EXPECT_EQ(kc.skipped(), 1u);
}

// A Memory channel made again (a reboot) starts its producer ids and sequences over: the keys of
// the old one's keyless messages must not make the new one's look processed.
TEST_F(KeyedConsumerTest, AChannelMadeAgainDoesNotInheritTheKeysOfItsInnerIds) {
  const auto name = channel_name();
  KeyedConsumerOptions ko;
  ko.store = dir_ / "keys";
  for (int life = 0; life < 2; ++life) {
    auto ch = Channel::open(name, options());
    ch.ensure_group("g");
    Producer p(ch, "p");
    ASSERT_EQ(p.publish("life " + std::to_string(life)).id, (InnerId{1, 1}));
    KeyedConsumer kc(ch, "g", ko);
    int handled = 0;
    while (kc.process([&](const Message&) { return ++handled, true; }, 200ms) != Handled::Nothing) {
    }
    EXPECT_EQ(handled, 1) << "life " << life;
    EXPECT_EQ(kc.skipped(), 0u);
    Channel::remove(name);
  }
}

TEST_F(KeyedConsumerTest, TheDefaultStoreIsInTheChannelsJournalDirectory) {
  const auto name = channel_name();
  ChannelOptions o = options();
  o.durability = Durability::Async;
  o.journal_dir = dir_ / "journals";
  auto ch = Channel::open(name, o);
  KeyedConsumer kc(ch, "billing");
  EXPECT_EQ(kc.store_path(), fs::absolute(dir_ / "journals" / name / "keys.billing").lexically_normal());
  EXPECT_TRUE(fs::exists(kc.store_path()));
}

TEST_F(KeyedConsumerTest, ABadStoreIsAClearErrorAndJoinsNothing) {
  const auto name = channel_name();
  auto ch = Channel::open(name, options());
  {
    std::ofstream junk(dir_ / "junk");
    junk << "this is not a key store at all";
  }
  KeyedConsumerOptions ko;
  ko.store = dir_ / "junk";
  try {
    KeyedConsumer kc(ch, "g", ko);
    FAIL() << "a junk store was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir_ / "junk").string()), std::string::npos) << e.what();
  }
  EXPECT_EQ(ch.stats().live_consumers, 0u);
  EXPECT_THROW(KeyedConsumer(ch, "bad/group", ko), Error);
}

}  // namespace
}  // namespace shmq::test
