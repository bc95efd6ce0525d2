// Other users of the host (issues 11.10, 11.18): a segment file somebody else made first, a
// symbolic link at the segment's path, and the modes of the files we make under any umask. The
// test runs as root and plays the other user (nobody, 65534) in forked children that drop their
// ids with setresgid/setresuid.
#include <gtest/gtest.h>

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "support.hpp"

namespace {
using namespace shmq;
using namespace shmq::test;

constexpr uid_t kNobody = 65534;

// Runs FN in a forked child as uid/gid nobody, with umask MASK; the child's exit code.
ChildResult as_nobody(std::function<int()> fn, mode_t mask = 022) {
  const pid_t pid = fork_child([&] {
    CHILD_CHECK(::setgroups(0, nullptr) == 0);
    CHILD_CHECK(::setresgid(kNobody, kNobody, kNobody) == 0);
    CHILD_CHECK(::setresuid(kNobody, kNobody, kNobody) == 0);
    CHILD_CHECK(::geteuid() == kNobody);
    ::umask(mask);
    return fn();
  }, 30);
  return wait_child(pid, 30s);
}

class Permissions : public ChannelTest {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "these tests play another uid: they need to run as root";
  }
};

std::optional<std::string> error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

bool has(const std::string& what, std::string_view word) { return what.find(word) != std::string::npos; }

// Squatting (11.10): nobody makes an empty 0666 /dev/shm/shmq.NAME first; root's Channel::open
// built its channel inside that file, and nobody could read every message. Refused now, with an
// Error naming the path, its owner and its mode; the file is left as it was.
TEST_F(Permissions, ASegmentFileAnotherUserMadeFirstIsRefused) {
  const std::string name = channel_name("squat");
  const std::string path = segment_path(name);
  const ChildResult made = as_nobody([&] {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0666);
    CHILD_CHECK(fd >= 0);
    ::close(fd);
    return 0;
  }, 0);
  ASSERT_TRUE(made.ok()) << made.describe();
  const auto e = error_of([&] { Channel::open(name, memory_options()); });
  ASSERT_TRUE(e) << "root's channel was built inside a file that nobody owns and can read";
  EXPECT_TRUE(has(*e, path) && has(*e, "uid 65534") && has(*e, "0666")) << *e;
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0) << "the squatter's file was written";
  EXPECT_TRUE(error_of([&] { Channel::attach(name); })) << "attach must refuse it too";
  // The opt-in for shared-uid setups.
  ChannelOptions o = memory_options();
  o.allow_foreign_segment = true;
  o.mode = 0666;
  EXPECT_FALSE(error_of([&] { Channel::open(name, o); }));
}

// A real channel made by another user: root's attach and open refuse it.
TEST_F(Permissions, AChannelAnotherUserOwnsIsRefusedByAttachAndOpen) {
  const std::string name = channel_name("theirs");
  Pipe made, done;
  const pid_t owner = fork_child([&] {
    CHILD_CHECK(::setgroups(0, nullptr) == 0);
    CHILD_CHECK(::setresgid(kNobody, kNobody, kNobody) == 0);
    CHILD_CHECK(::setresuid(kNobody, kNobody, kNobody) == 0);
    ChannelOptions o = memory_options(1 << 16, 1 << 10);
    o.mode = 0666;
    Channel ch = Channel::open(name, o);
    CHILD_CHECK(made.send('m'));
    char x;
    (void)done.receive(x, 20s);
    return 0;
  }, 30);
  char x;
  ASSERT_TRUE(made.receive(x, 10s));
  const auto a = error_of([&] { Channel::attach(name); });
  ASSERT_TRUE(a) << "root attached to a segment that uid 65534 owns";
  EXPECT_TRUE(has(*a, "uid 65534")) << *a;
  ChannelOptions o = memory_options(1 << 16, 1 << 10);
  o.mode = 0666;
  EXPECT_TRUE(error_of([&] { Channel::open(name, o); }));
  ASSERT_TRUE(done.send('d'));
  EXPECT_TRUE(wait_child(owner, 20s).ok());
}

// Our own file, but with a mode wider than the channel's (a leftover, or a chmod): refused by
// Channel::open with mode 0600.
TEST_F(Permissions, OurOwnSegmentFileWithAWiderModeThanTheChannelsIsRefused) {
  const std::string name = channel_name("wide");
  const std::string path = segment_path(name);
  const mode_t old = ::umask(0);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0666);
  ::umask(old);
  ASSERT_GE(fd, 0);
  ::close(fd);
  const auto e = error_of([&] { Channel::open(name, memory_options()); });
  ASSERT_TRUE(e) << "a channel of mode 0600 was built in a file others may write";
  EXPECT_TRUE(has(*e, path) && has(*e, "0666") && has(*e, "0600")) << *e;
}

// A symbolic link at the segment's path (to a file of root's, or to nowhere) is refused, never
// followed: the target is neither created, nor truncated, nor written.
TEST_F(Permissions, ASymbolicLinkAtTheSegmentPathIsRefusedAndNotFollowed) {
  const std::string name = channel_name("link");
  const std::string path = segment_path(name);
  const std::string target = "/dev/shm/shmq-test-target-" + std::to_string(::getpid());
  const std::string nowhere = target + "-missing";
  {
    std::ofstream f(target);
    f << "precious";
  }
  ::chmod(target.c_str(), 0600);
  for (const std::string& to : {target, nowhere}) {
    SCOPED_TRACE(to);
    ::unlink(path.c_str());
    const ChildResult linked = as_nobody([&] { return ::symlink(to.c_str(), path.c_str()) == 0 ? 0 : 1; });
    ASSERT_TRUE(linked.ok()) << linked.describe();
    const auto e = error_of([&] { Channel::open(name, memory_options()); });
    ASSERT_TRUE(e) << "a symbolic link at the segment path was followed";
    EXPECT_TRUE(has(*e, path) && has(*e, "symbolic link")) << *e;
    EXPECT_TRUE(error_of([&] { Channel::attach(name); }));
    struct stat st {};
    ASSERT_EQ(::stat(target.c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 8) << "the link's target was changed";
    EXPECT_NE(::access(nowhere.c_str(), F_OK), 0) << "the link's target was created";
  }
  ::unlink(path.c_str());
  ::unlink(target.c_str());
}

// The segment gets exactly the channel's mode under umask 000 and 022 (and 077 does not narrow a
// mode that shares on purpose); another uid cannot open a 0600 channel.
TEST_F(Permissions, TheSegmentHasTheChannelsModeUnderAnyUmaskAndNobodyElseOpensA0600One) {
  for (const mode_t mask : {mode_t(000), mode_t(022), mode_t(077)}) {
    for (const unsigned mode : {0600u, 0640u, 0666u}) {
      SCOPED_TRACE("umask " + std::to_string(mask) + " mode " + std::to_string(mode));
      const std::string name = channel_name("m" + std::to_string(mask) + "-" + std::to_string(mode));
      ChannelOptions o = memory_options(1 << 16, 1 << 10);
      o.mode = mode;
      const mode_t old = ::umask(mask);
      {
        Channel ch = Channel::open(name, o);
        ::umask(old);
        struct stat st {};
        ASSERT_EQ(::stat(segment_path(name).c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 07777, mode) << std::oct << (st.st_mode & 07777);
        EXPECT_EQ(st.st_uid, 0u);
        if (mode == 0600) {
          const ChildResult r = as_nobody([&] {
            CHILD_CHECK(::open(segment_path(name).c_str(), O_RDONLY) < 0 && errno == EACCES);
            bool refused = false;
            try {
              Channel::attach(name);
            } catch (const Error&) {
              refused = true;
            }
            CHILD_CHECK(refused);
            return 0;
          });
          EXPECT_TRUE(r.ok()) << r.describe();
        }
        // Reopening as the owner with the same mode is fine.
        EXPECT_FALSE(error_of([&] { Channel::open(name, o); }));
      }
      ::umask(old);
    }
  }
}

}  // namespace
