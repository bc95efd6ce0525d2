// Channel: naming, options, the segment file (mode, validation of what is found there) and the
// attach/create/remove lifecycle.
#include "shm/channel_state.hpp"
#include "support.hpp"

#include <algorithm>
#include <fstream>
#include <random>
#include <set>

namespace shmq::test {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool mentions(const std::string& what, std::initializer_list<std::string_view> words) {
  const std::string w = lower(what);
  return std::any_of(words.begin(), words.end(),
                     [&](std::string_view word) { return w.find(lower(std::string(word))) != std::string::npos; });
}

// Runs f, which must throw shmq::Error; returns the error (code and message).
template <class F>
std::optional<Error> expect_error(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw something other than shmq::Error: " << e.what();
    return std::nullopt;
  }
  ADD_FAILURE() << "did not throw";
  return std::nullopt;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<char>& bytes) {
  const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

void pwrite_file(const std::string& path, const void* bytes, std::size_t n, off_t offset) {
  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::pwrite(fd, bytes, n, offset), static_cast<ssize_t>(n));
  ::close(fd);
}

std::vector<char> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<char> v(n);
  for (auto& c : v) c = static_cast<char>(rng() & 0xff);
  return v;
}

// Makes a valid segment holding one message, then closes it.
void make_valid_segment(const std::string& name) {
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("hello").status, Status::Ok);
}

using ChannelLifecycle = ChannelTest;

TEST_F(ChannelLifecycle, OpenCreatesAChannelThatExistsAndIsListed) {
  const auto name = channel_name();
  EXPECT_FALSE(Channel::exists(name));
  Channel ch = Channel::open(name, memory_options());
  EXPECT_EQ(ch.name(), name);
  EXPECT_TRUE(Channel::exists(name));
  const auto all = Channel::list();
  EXPECT_NE(std::find(all.begin(), all.end(), name), all.end()) << "Channel::list() misses " << name;
  struct stat st {};
  EXPECT_EQ(::stat(segment_path(name).c_str(), &st), 0) << segment_path(name);
}

TEST_F(ChannelLifecycle, AttachSeesWhatOpenPublished) {
  const auto name = channel_name();
  Channel created = Channel::open(name, memory_options());
  Consumer c(created, "g");
  Producer p(created, "p");
  ASSERT_EQ(p.publish("through the creator").status, Status::Ok);

  Channel attached = Channel::attach(name);
  EXPECT_EQ(attached.name(), name);
  EXPECT_EQ(attached.options().ring_bytes, created.options().ring_bytes);
  EXPECT_EQ(attached.options().max_message_bytes, created.options().max_message_bytes);
  Consumer c2(attached, "g");
  auto m = poll_for(c2, 5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "through the creator");
  EXPECT_EQ(c2.ack(*m), Status::Ok);
}

TEST_F(ChannelLifecycle, RemoveDeletesTheSegmentAndAttachThenFails) {
  const auto name = channel_name();
  { Channel ch = Channel::open(name, memory_options()); }
  ASSERT_TRUE(Channel::exists(name));
  Channel::remove(name);
  EXPECT_FALSE(Channel::exists(name));
  EXPECT_TRUE(expect_error([&] { Channel::remove(name); })) << "removing a missing channel is an error";
  const auto all = Channel::list();
  EXPECT_EQ(std::find(all.begin(), all.end(), name), all.end());
  struct stat st {};
  EXPECT_NE(::stat(segment_path(name).c_str(), &st), 0);
  EXPECT_TRUE(expect_error([&] { Channel::attach(name); }));
}

TEST_F(ChannelLifecycle, HandlesKeepWorkingAfterRemove) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  Channel::remove(name);
  EXPECT_FALSE(Channel::exists(name));
  ASSERT_EQ(p.publish("after remove").status, Status::Ok);
  auto m = poll_for(c, 5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "after remove");
}

TEST_F(ChannelLifecycle, AttachToAMissingChannelFailsWithNoSuchFile) {
  const auto name = channel_name();
  auto e = expect_error([&] { Channel::attach(name); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), std::errc::no_such_file_or_directory) << e->what();
  EXPECT_TRUE(mentions(e->what(), {name})) << e->what();
  EXPECT_FALSE(Channel::exists(name)) << "attach must not create";
}

TEST_F(ChannelLifecycle, AChannelIsMovable) {
  const auto name = channel_name();
  Channel a = Channel::open(name, memory_options());
  Channel b = std::move(a);
  EXPECT_EQ(b.name(), name);
  Channel c = Channel::open(channel_name(), memory_options());
  c = std::move(b);
  EXPECT_EQ(c.name(), name);
  Consumer cons(c, "g");
  Producer p(c, "p");
  ASSERT_EQ(p.publish("moved").status, Status::Ok);
  auto m = poll_for(cons, 5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "moved");
}

TEST_F(ChannelLifecycle, StatusNamesAreDistinct) {
  const Status all[] = {Status::Ok,       Status::Duplicate, Status::WouldBlock, Status::Timeout,
                        Status::TooLarge, Status::Closed,    Status::Corrupt,    Status::NotHeld};
  std::vector<std::string> names;
  for (Status s : all) {
    const char* n = to_string(s);
    ASSERT_NE(n, nullptr);
    EXPECT_GT(std::strlen(n), 0u);
    names.emplace_back(n);
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::unique(names.begin(), names.end()), names.end());
}

// ---- names -------------------------------------------------------------------------------------

using ChannelNames = ChannelTest;

TEST_F(ChannelNames, BadNamesAreRefusedWithAnErrorNamingTheChannel) {
  const std::string too_long(201, 'x');
  for (const std::string& bad : {std::string(), std::string("a/b"), std::string("/lead"),
                                 std::string(".."), too_long}) {
    SCOPED_TRACE("name '" + bad + "'");
    auto e = expect_error([&] { Channel::open(bad, memory_options()); });
    ASSERT_TRUE(e);
    // The message names the channel; an over-long name may be shortened there, to 32 characters
    // at the least.
    if (!bad.empty()) {
      EXPECT_TRUE(mentions(e->what(), {bad.size() > 200 ? std::string_view(bad).substr(0, 32) : bad}))
          << e->what();
    }
    EXPECT_TRUE(expect_error([&] { Channel::attach(bad); }));
  }
}

TEST_F(ChannelNames, ANameOf200CharactersIsAccepted) {
  std::string name = unique_name("long");
  name.resize(200, 'n');
  {
    Channel ch = Channel::open(name, memory_options());
    EXPECT_EQ(ch.name(), name);
    EXPECT_TRUE(Channel::exists(name));
  }
  Channel::remove(name);
  EXPECT_FALSE(Channel::exists(name));
}

// ---- options -----------------------------------------------------------------------------------

using ChannelOptionsTest = ChannelTest;

TEST_F(ChannelOptionsTest, RingBytesThatAreNotAPowerOfTwoAreRefused) {
  const auto name = channel_name();
  for (std::size_t bad : {std::size_t{(1 << 20) + 4096}, std::size_t{3} << 20, std::size_t{100000}}) {
    SCOPED_TRACE("ring_bytes " + std::to_string(bad));
    auto o = memory_options(bad, 4096);
    auto e = expect_error([&] { Channel::open(name, o); });
    ASSERT_TRUE(e);
    EXPECT_TRUE(mentions(e->what(), {name})) << e->what();
    EXPECT_FALSE(Channel::exists(name)) << "a refused open left a segment";
  }
}

TEST_F(ChannelOptionsTest, RingBytesBelow64KiBAreRefused) {
  const auto name = channel_name();
  auto e = expect_error([&] { Channel::open(name, memory_options(32 << 10, 1024)); });
  ASSERT_TRUE(e);
  EXPECT_FALSE(Channel::exists(name));
  // 64 KiB itself is the smallest ring allowed.
  Channel ch = Channel::open(name, memory_options(64 << 10, 16 << 10));
  EXPECT_EQ(ch.options().ring_bytes, std::size_t{64} << 10);
}

TEST_F(ChannelOptionsTest, MaxMessageBytesOverAQuarterOfTheRingIsRefused) {
  const auto name = channel_name();
  auto e = expect_error([&] { Channel::open(name, memory_options(1 << 20, (256 << 10) + 1)); });
  ASSERT_TRUE(e);
  EXPECT_FALSE(Channel::exists(name));
  Channel ch = Channel::open(name, memory_options(1 << 20, 256 << 10));
  EXPECT_EQ(ch.options().max_message_bytes, std::size_t{256} << 10);
}

TEST_F(ChannelOptionsTest, ADurabilityOtherThanTheSegmentsOrAnUnusableJournalDirectoryIsRefused) {
  const auto name = channel_name();
  {
    Channel memory = Channel::open(name, memory_options());
    auto o = memory_options();
    o.durability = Durability::Async;
    auto e = expect_error([&] { Channel::open(name, o); });
    ASSERT_TRUE(e);
    EXPECT_TRUE(mentions(e->what(), {"durability"})) << e->what();
  }
  Channel::remove(name);
  // A journal directory that cannot be one (a regular file stands there).
  const std::string file = "/tmp/" + unique_name("not-a-dir");
  { std::FILE* f = std::fopen(file.c_str(), "w"); ASSERT_NE(f, nullptr); std::fclose(f); }
  auto o = memory_options();
  o.durability = Durability::Sync;
  o.journal_dir = file;
  auto e = expect_error([&] { Channel::open(name, o); });
  ASSERT_TRUE(e);
  EXPECT_TRUE(mentions(e->what(), {"journal", file})) << e->what();
  EXPECT_FALSE(Channel::exists(name)) << "a refused open left a segment";
  ::unlink(file.c_str());
}

// ---- the segment file --------------------------------------------------------------------------

using SegmentFile = ChannelTest;

TEST_F(SegmentFile, IsCreatedWithMode0600ByDefault) {
  const auto name = channel_name();
  const mode_t old = ::umask(0);  // the mode must not depend on the umask being kind
  Channel ch = Channel::open(name, memory_options());
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(segment_path(name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u) << std::oct << (st.st_mode & 07777);
  EXPECT_EQ(st.st_uid, ::getuid());
}

TEST_F(SegmentFile, IsCreatedWithTheRequestedMode) {
  const auto name = channel_name();
  auto o = memory_options();
  o.mode = 0640;
  const mode_t old = ::umask(022);
  Channel ch = Channel::open(name, o);
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(segment_path(name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u) << std::oct << (st.st_mode & 07777);
}

TEST_F(SegmentFile, AFileOfRandomBytesIsRefusedAndLeftUntouched) {
  const auto name = channel_name();
  const auto path = segment_path(name);
  const auto bytes = random_bytes(64 << 10, 20240601);
  write_file(path, bytes);
  {
    Deadline d(20, "open of a file of random bytes");
    auto e = expect_error([&] { Channel::open(name, memory_options()); });
    ASSERT_TRUE(e);
    EXPECT_TRUE(mentions(e->what(), {name})) << e->what();
    EXPECT_TRUE(expect_error([&] { Channel::attach(name); }));
  }
  EXPECT_EQ(read_file(path), bytes) << "the library changed a file that is not its own";
  ::unlink(path.c_str());
}

TEST_F(SegmentFile, AShortFileIsRefusedAndLeftUntouched) {
  const auto name = channel_name();
  const auto path = segment_path(name);
  const std::vector<char> bytes = {'S', 'H', 'M', 'Q', 'S', 'E', 'G', '1', 1, 0};
  write_file(path, bytes);
  {
    Deadline d(20, "open of a short file");
    auto e = expect_error([&] { Channel::open(name, memory_options()); });
    ASSERT_TRUE(e);
    EXPECT_TRUE(mentions(e->what(), {name})) << e->what();
    EXPECT_TRUE(expect_error([&] { Channel::attach(name); }));
  }
  EXPECT_EQ(read_file(path), bytes) << "the library changed a file that is not its own";
  ::unlink(path.c_str());
}

TEST_F(SegmentFile, ASegmentWithAScribbledHeaderIsRefusedWithTheCause) {
  const auto name = channel_name();
  const auto path = segment_path(name);
  ASSERT_NO_FATAL_FAILURE(make_valid_segment(name));
  const auto garbage = random_bytes(64, 7);
  ASSERT_NO_FATAL_FAILURE(pwrite_file(path, garbage.data(), garbage.size(), 0));
  const auto before = read_file(path);

  Deadline d(20, "open of a scribbled segment");
  auto e = expect_error([&] { Channel::open(name, memory_options()); });
  ASSERT_TRUE(e);
  EXPECT_TRUE(mentions(e->what(), {name})) << e->what();
  EXPECT_TRUE(mentions(e->what(), {"magic", "header", "not a shmq"})) << e->what();
  EXPECT_TRUE(expect_error([&] { Channel::attach(name); }));
  EXPECT_EQ(read_file(path), before) << "the library re-initialised a segment it does not understand";
  ::unlink(path.c_str());
}

TEST_F(SegmentFile, ASegmentOfAnotherLayoutVersionIsRefusedNamingTheVersion) {
  const auto name = channel_name();
  const auto path = segment_path(name);
  ASSERT_NO_FATAL_FAILURE(make_valid_segment(name));
  {
    const auto bytes = read_file(path);
    ASSERT_GE(bytes.size(), 12u);
    ASSERT_EQ(std::string(bytes.data(), 8), "SHMQSEG1");
  }
  std::uint32_t version = 0;
  {
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pread(fd, &version, 4, 8), 4);
    ::close(fd);
  }
  const std::uint32_t other = version + 1;  // little-endian host
  ASSERT_NO_FATAL_FAILURE(pwrite_file(path, &other, 4, 8));
  const auto before = read_file(path);

  Deadline d(20, "open of a segment of another layout version");
  auto e = expect_error([&] { Channel::open(name, memory_options()); });
  ASSERT_TRUE(e);
  EXPECT_TRUE(mentions(e->what(), {name})) << e->what();
  EXPECT_TRUE(mentions(e->what(), {"version"})) << e->what();
  EXPECT_TRUE(expect_error([&] { Channel::attach(name); }));
  EXPECT_EQ(read_file(path), before);
  ::unlink(path.c_str());
}

TEST_F(SegmentFile, StrictGeometryRefusesADifferentRingSizeNamingTheField) {
  const auto name = channel_name();
  Channel creator = Channel::open(name, memory_options(1 << 20, 64 << 10));
  auto o = memory_options(2 << 20, 64 << 10);
  o.strict_geometry = true;
  auto e = expect_error([&] { Channel::open(name, o); });
  ASSERT_TRUE(e);
  EXPECT_TRUE(mentions(e->what(), {"ring_bytes"})) << e->what();
  // The same geometry is accepted under strict_geometry.
  auto same = memory_options(1 << 20, 64 << 10);
  same.strict_geometry = true;
  Channel again = Channel::open(name, same);
  EXPECT_EQ(again.options().ring_bytes, std::size_t{1} << 20);
}

TEST_F(SegmentFile, AttachingAdoptsTheSegmentGeometryByDefault) {
  const auto name = channel_name();
  Channel creator = Channel::open(name, memory_options(1 << 20, 64 << 10));
  Channel opener = Channel::open(name, memory_options(4 << 20, 512 << 10));
  EXPECT_EQ(opener.options().ring_bytes, creator.options().ring_bytes);
  EXPECT_EQ(opener.options().ring_bytes, std::size_t{1} << 20);
  EXPECT_EQ(opener.options().max_message_bytes, std::size_t{64} << 10);
  const auto s = opener.stats();
  EXPECT_EQ(s.ring_bytes, std::size_t{1} << 20);
  EXPECT_EQ(s.max_message_bytes, std::size_t{64} << 10);
}

// A small ring needs no second option: the default message limit follows it (a new user's first
// Channel::open with ring_bytes = 256 KiB used to throw about max_message_bytes).
TEST_F(SegmentFile, DefaultMessageLimitFollowsASmallRing) {
  ChannelOptions o;
  o.durability = Durability::Memory;
  o.ring_bytes = 256 << 10;
  Channel small = Channel::open(channel_name("small"), o);
  EXPECT_EQ(small.options().max_message_bytes, std::size_t{64} << 10);
  o.ring_bytes = 64 << 20;
  Channel big = Channel::open(channel_name("big"), o);
  EXPECT_EQ(big.options().max_message_bytes, std::size_t{1} << 20);
  o.ring_bytes = 256 << 10;
  o.max_message_bytes = 128 << 10;  // set: still checked against the ring
  EXPECT_THROW(Channel::open(channel_name("bad"), o), Error);
}

// Issue 11.3: indices and positions in the consumer and group tables are hostile input. Each
// scenario runs in a child process, so that a crash is a failed check rather than a dead test.
using ScribbledTables = ChannelTest;

void expect_child_ok(const std::function<int()>& fn) {
  const pid_t pid = fork_child(fn, 30);
  const ChildResult r = wait_child(pid, 40s);
  EXPECT_TRUE(r.ok()) << "the scribbled-on process " << r.describe();
}

TEST_F(ScribbledTables, ANackAfterTheConsumersGroupIndexWasScribbledIsCorruptNotACrash) {
  const std::string name = channel_name();
  expect_child_ok([&] {
    Channel ch = Channel::open(name, memory_options());
    Producer p(ch, "p");
    Consumer c(ch, "g");
    CHILD_CHECK(p.publish("a").status == Status::Ok);
    auto m = c.poll(1s);
    CHILD_CHECK(m);
    detail::ChannelState& s = ch.state();
    for (std::uint32_t i = 0; i < s.options.max_consumers; ++i)
      if (s.consumers[i].state.load() == detail::kActive) s.consumers[i].group.store(0x7ffffff0u);
    CHILD_CHECK(c.nack(*m) == Status::Corrupt);
    (void)ch.stats();
    s.reap_dead_consumers(true);
    return kChildOk;  // the destructor releases a slot whose group is out of range
  });
}

TEST_F(ScribbledTables, AGiveBackEntryAtAPositionThatIsNoRecordIsDroppedAndNeverGatesTheRing) {
  const std::string name = channel_name();
  expect_child_ok([&] {
    Channel ch = Channel::open(name, memory_options(64 << 10, 1 << 10));
    Producer p(ch, "p");
    Consumer c(ch, "g");
    CHILD_CHECK(p.publish("a").status == Status::Ok);
    detail::GroupSlot& g = ch.state().groups[0];
    g.give_back[0].position_plus1.store(13 + 1);                 // not aligned
    g.give_back[1].position_plus1.store(ch.state().ring->tail() + 4096 + 1);  // beyond the tail
    g.given_back.store(2);
    // Whatever poll says about them (an Error naming the entry, or nothing), it must not deliver
    // them, and the group must go on: a ring's worth of messages flows through afterwards.
    unsigned got = 0;
    for (int i = 0; i < 4 && got == 0; ++i) {
      try {
        if (auto m = c.poll(100ms)) {
          CHILD_CHECK(m->text() == "a");
          CHILD_CHECK(c.ack(*m) == Status::Ok);
          ++got;
        }
      } catch (const Error&) {
      }
    }
    CHILD_CHECK(got == 1);
    PublishOptions po;
    po.timeout = 200ms;
    const std::string payload(900, 'x');
    for (int i = 0; i < 300; ++i) {  // about four laps of the 64 KiB ring
      CHILD_CHECK(p.publish(payload, po).status == Status::Ok);
      auto m = c.poll(1s);
      CHILD_CHECK(m && m->payload().size() == payload.size());
      CHILD_CHECK(c.ack(*m) == Status::Ok);
    }
    CHILD_CHECK(g.given_back.load() == 0);
    return kChildOk;
  });
}

TEST_F(ScribbledTables, HostileCountsStepsAndTakersInTheGroupSlotAreSurvived) {
  const std::string name = channel_name();
  expect_child_ok([&] {
    Channel ch = Channel::open(name, memory_options());
    Producer p(ch, "p");
    Consumer c(ch, "g");
    detail::GroupSlot& g = ch.state().groups[0];
    // A count with nothing behind it: polls find the list empty and put the count right.
    g.given_back.store(0xffffffffu);
    CHILD_CHECK(!c.poll(20ms));
    CHILD_CHECK(g.given_back.load() == 0);
    // A dead holder's step naming slots that do not exist, and a taker naming a consumer that
    // does not exist: the next lock holder and the next take ignore them.
    g.give_back_step.store(detail::give_back_step(detail::GiveBackStep::Take, 4095, 255, 1023));
    g.give_back_step_position.store(8 + 1);
    g.next_taker.store((g.next_taker.load() & ~0xffffffffull) | 0xfffff0ffu);
    for (int i = 0; i < 3; ++i) CHILD_CHECK(p.publish("m" + std::to_string(i)).status == Status::Ok);
    auto m = c.poll(1s);
    CHILD_CHECK(m && m->text() == "m0");
    CHILD_CHECK(c.nack(*m) == Status::Ok);
    for (int i = 0; i < 3; ++i) {
      auto n = c.poll(1s);
      CHILD_CHECK(n && n->text() == "m" + std::to_string(i));
      CHILD_CHECK(c.ack(*n) == Status::Ok);
    }
    CHILD_CHECK(g.give_back_step.load() == 0);
    return kChildOk;
  });
}

// Issue 11.13: joining reaps. A peer filled the consumer table and died: a new consumer joins
// (the constructor reaps, forced, before it refuses) and gets what the dead ones held.
using Joining = ChannelTest;

TEST_F(Joining, AConsumerJoinsATableFilledByDeadConsumersAndGetsWhatTheyHeld) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options();
  o.max_consumers = 3;
  o.liveness_interval = std::chrono::hours(1);  // no poll would have reaped them by now
  {
    Channel ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    for (int i = 0; i < 3; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
  }
  for (int i = 0; i < 3; ++i) {
    const pid_t pid = fork_child([&] {
      Channel ch = Channel::open(name, o);
      Consumer c(ch, "g");
      CHILD_CHECK(c.poll(1s));
      ::kill(::getpid(), SIGKILL);  // dies holding it, its slot taken
      return kChildFailed;
    });
    ASSERT_TRUE(wait_child(pid, 30s).killed_by(SIGKILL));
  }
  Channel ch = Channel::open(name, o);
  std::optional<Consumer> c;
  try {
    c.emplace(ch, "g");
  } catch (const Error& e) {
    FAIL() << "a table of dead consumers refused the join: " << e.what();
  }
  std::set<std::string> got;
  while (auto m = c->poll(100ms)) {
    got.emplace(m->text());
    EXPECT_EQ(m->deliveries(), 2u);
    EXPECT_EQ(c->ack(*m), Status::Ok);
  }
  EXPECT_EQ(got, (std::set<std::string>{"m0", "m1", "m2"}));
}

// A live process that holds the registry lock (stuck, or stopped) makes constructors give up
// after ChannelOptions::registry_timeout with an Error naming its pid, instead of waiting for ever.
TEST_F(Joining, ConstructorsGiveUpOnARegistryLockALiveProcessHoldsAndNameIt) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options();
  o.registry_timeout = 200ms;
  { Channel ch = Channel::open(name, o); }
  Pipe locked;
  const pid_t holder = fork_child([&] {
    locked.close_read();
    Channel ch = Channel::open(name, o);
    ch.state().lock_registry();
    CHILD_CHECK(locked.send(std::uint32_t{1}));
    ::pause();  // holds it until killed
    return kChildOk;
  });
  locked.close_write();
  std::uint32_t one = 0;
  ASSERT_TRUE(locked.receive(one, 20s));
  // In a child with its own deadline: before, these waited for ever.
  const pid_t tryer = fork_child([&] {
    Channel ch = Channel::open(name, o);
    const std::string pid = std::to_string(holder);
    for (int which = 0; which < 2; ++which) {
      const auto t0 = Clock::now();
      try {
        if (which == 0) Consumer c(ch, "g");
        else Producer p(ch, "p");
        CHILD_CHECK(!"the constructor went ahead under another process's registry lock");
      } catch (const Error& e) {
        const std::string what = e.what();
        if (what.find(pid) == std::string::npos) std::fprintf(stderr, "error without the holder's pid %s: %s\n", pid.c_str(), e.what());
        CHILD_CHECK(what.find(pid) != std::string::npos);
        CHILD_CHECK(e.code() == std::errc::timed_out);
      }
      CHILD_CHECK(Clock::now() - t0 >= 150ms);
    }
    return kChildOk;
  }, 20);
  const ChildResult r = wait_child(tryer, 30s);
  kill_child(holder);
  EXPECT_TRUE(r.ok()) << "the constructors under a held registry lock: " << r.describe();
  // With the holder gone, its lock is taken over: joining works again.
  Channel ch = Channel::open(name, o);
  Consumer c(ch, "g");
  Producer p(ch, "p");
  EXPECT_EQ(p.publish("after").status, Status::Ok);
}

}  // namespace
}  // namespace shmq::test
