// The consumer protocol under SIGKILL at each of its named crash points (shm/crash_point.hpp).
//
// Claim: whichever consumer (or reaper) store a process dies after, the survivors see every
// message of the group delivered and acked exactly once; a message acked by the dead process is
// never delivered again; no message is held by two consumers at once; and each redelivery carries
// the right delivery count (one more than the deliveries made so far, the dead process's included
// when it had taken the message).
//
// How: the parent publishes kMessages messages, then forks a victim that runs a fixed script
// (poll; ack, or nack a first delivery every other time; poll the nacked one again; ...) with one
// crash point armed at its Nth pass, reporting through a pipe what it got and what it acked. Once
// the victim is dead the parent, as the survivor, reaps (forced) and polls everything without
// acking, so that a message handed out twice shows up twice while the first copy is still held.
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "shm/channel_state.hpp"
#include "shm/crash_point.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

constexpr std::uint64_t kMessages = 8;

// What a victim tells the parent, in the order it happened.
struct Report {
  // Acking: about to ack it in a batch ack (which may die half-way).
  enum Kind : std::uint32_t { Got = 1, Acked = 2, Nacked = 3, Acking = 4 } kind;
  std::uint32_t deliveries;
  std::uint64_t seq;
};

struct Case {
  const char* point;
  unsigned hit;
  bool exclusive = false;           // the victim is the group's exclusive consumer
  bool survivor_exclusive = false;  // and so is the survivor
  // The victim takes with poll_batch() of this many (0: poll()) and acks each batch with ack()
  // of the batch or ack_up_to() of its last message, in turn (no nacks: each run's messages are
  // then the next ones of the cursor, in order).
  unsigned batch = 0;
  // The survivor takes from the cursor before any reaper runs: its take confirms the dead
  // victim's last take (confirm_taker()), which the reaper then finds decided.
  bool survivor_takes_first = false;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string n = std::string(info.param.point) + "_" + std::to_string(info.param.hit) +
                  (info.param.exclusive ? "_exclusive" : "") + (info.param.survivor_exclusive ? "_then_exclusive" : "") +
                  (info.param.batch ? "_batch" + std::to_string(info.param.batch) : "") +
                  (info.param.survivor_takes_first ? "_survivor_takes_first" : "");
  for (char& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

class ConsumerCrash : public ChannelTest, public ::testing::WithParamInterface<Case> {};

// The victim's script: poll with a deadline; ack, except that every other first delivery is nacked
// (and so comes back through the give-back list). Reports every step through OUT.
int run_victim(const std::string& name, const Pipe& out, bool reap_first, bool exclusive, unsigned batch) {
  Channel ch = Channel::open(name, memory_options());
  if (reap_first) ch.state().reap_dead_consumers(true);
  ConsumerOptions o;
  o.max_in_flight = 4;
  o.exclusive = exclusive;
  Consumer c(ch, "g", o);
  if (batch) {
    std::vector<Message> got(batch);
    for (int i = 0; i < 64; ++i) {
      const std::size_t n = c.poll_batch(got, 200ms);
      if (n == 0) break;
      for (std::size_t j = 0; j < n; ++j) CHILD_CHECK(out.send(Report{Report::Got, got[j].deliveries(), got[j].id().seq}));
      for (std::size_t j = 0; j < n; ++j) CHILD_CHECK(out.send(Report{Report::Acking, got[j].deliveries(), got[j].id().seq}));
      const std::size_t acked = i % 2 ? c.ack_up_to(got[n - 1]) : c.ack(std::span<const Message>(got.data(), n));
      CHILD_CHECK(acked == n);
      for (std::size_t j = 0; j < n; ++j) CHILD_CHECK(out.send(Report{Report::Acked, got[j].deliveries(), got[j].id().seq}));
    }
    return kChildOk;
  }
  unsigned firsts = 0;
  for (int i = 0; i < 64; ++i) {
    auto m = c.poll(200ms);
    if (!m) break;
    CHILD_CHECK(out.send(Report{Report::Got, m->deliveries(), m->id().seq}));
    if (m->deliveries() == 1 && (firsts++ % 2) == 1) {
      CHILD_CHECK(c.nack(*m) == Status::Ok);
      CHILD_CHECK(out.send(Report{Report::Nacked, m->deliveries(), m->id().seq}));
    } else {
      CHILD_CHECK(c.ack(*m) == Status::Ok);
      CHILD_CHECK(out.send(Report{Report::Acked, m->deliveries(), m->id().seq}));
    }
  }
  return kChildOk;
}

TEST_P(ConsumerCrash, SurvivorsSeeEveryMessageAckedOnceAndNeverHeldTwice) {
  ASSERT_TRUE(detail::crash_points_enabled());
  const Case tc = GetParam();
  const std::string point = tc.point;
  const std::string name = channel_name();
  {
    Channel ch = Channel::open(name, memory_options());
    ch.ensure_group("g", Start::Earliest);
    Producer p(ch, "p");
    for (std::uint64_t i = 1; i <= kMessages; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
  }
  Pipe pipe;
  const bool reaper = point == "reap.before_release";
  if (reaper) {
    // A consumer that dies holding two messages, for the victim to reap.
    const pid_t first = fork_child([&] {
      pipe.close_read();
      Channel ch = Channel::open(name, memory_options());
      Consumer c(ch, "g");
      for (int i = 0; i < 2; ++i) {
        auto m = c.poll(1s);
        CHILD_CHECK(m);
        CHILD_CHECK(pipe.send(Report{Report::Got, m->deliveries(), m->id().seq}));
      }
      ::kill(::getpid(), SIGKILL);
      return kChildFailed;
    });
    ASSERT_TRUE(wait_child(first, 30s).killed_by(SIGKILL));
  }
  const pid_t victim = fork_child([&] {
    pipe.close_read();
    detail::arm_crash_point(point, tc.hit);
    return run_victim(name, pipe, reaper, tc.exclusive, tc.batch);
  });
  const ChildResult r = wait_child(victim, 30s);
  pipe.close_write();
  ASSERT_TRUE(r.killed_by(SIGKILL)) << point << ":" << tc.hit << ": the victim " << r.describe();

  // What the dead processes did, as they reported it.
  std::map<std::uint64_t, unsigned> gots;  // deliveries made to the dead processes
  std::set<std::uint64_t> acked, nacked_pending, acking;
  std::uint64_t last_got = 0;
  Report rep{};
  while (pipe.receive(rep, 2s)) {
    if (rep.kind == Report::Acking) {
      acking.insert(rep.seq);
    } else if (rep.kind == Report::Got) {
      ++gots[rep.seq];
      EXPECT_EQ(rep.deliveries, gots[rep.seq]) << "the dead consumer was told a wrong delivery count for m" << rep.seq;
      nacked_pending.erase(rep.seq);
      last_got = rep.seq;
    } else if (rep.kind == Report::Acked) {
      EXPECT_TRUE(acked.insert(rep.seq).second);
      acking.erase(rep.seq);
    } else {
      nacked_pending.insert(rep.seq);
    }
  }
  // A message the victim had taken at its death without telling anyone counts as delivered: at
  // poll.after_cursor_cas the next message of the cursor, inside take_given_back the message it
  // was taking again (the only nacked one not polled again: the script nacks one at a time).
  // A batch victim's run: the next ones of the cursor, as many as the batch (or what is left).
  std::set<std::uint64_t> taken_unreported;
  if (point == "poll.after_cursor_cas" || point == "poll.exclusive.after_cursor_store" || point == "poll.run.after_first_held") {
    for (std::uint64_t s = 1; s <= kMessages && taken_unreported.size() < std::max(tc.batch, 1u); ++s)
      if (!gots.count(s)) taken_unreported.insert(s);
  } else if (point.rfind("poll.take_given_back.", 0) == 0) {
    ASSERT_EQ(nacked_pending.size(), 1u);
    taken_unreported.insert(*nacked_pending.begin());
  }
  (void)last_got;

  // The survivor: reaps, then takes everything it can, holding it all.
  Channel ch = Channel::open(name, memory_options());
  ConsumerOptions o;
  o.max_in_flight = 256;
  o.exclusive = tc.survivor_exclusive;
  Consumer s(ch, "g", o);
  std::map<std::uint64_t, Message> held;
  auto take = [&](const Message& m) {
    const std::uint64_t seq = m.id().seq;
    EXPECT_FALSE(held.count(seq)) << point << ":" << tc.hit << ": m" << seq << " handed out twice while held";
    EXPECT_FALSE(acked.count(seq)) << point << ":" << tc.hit << ": m" << seq << " delivered again after it was acked";
    const unsigned expect = (gots.count(seq) ? gots[seq] : 0) + (taken_unreported.count(seq) ? 1 : 0) + 1;
    EXPECT_EQ(m.deliveries(), expect) << point << ":" << tc.hit << ": deliveries of m" << seq;
    held.emplace(seq, m);
  };
  auto drain = [&] {
    while (auto m = s.poll(100ms)) take(*m);
  };
  if (tc.survivor_takes_first) {
    // No reaper yet (poll(0) never reaps before its 1024th call): the survivor's take of the
    // cursor's next message, if any, is the one that confirms the dead victim's take.
    Message first[2];
    for (std::size_t n; (n = s.poll_batch(first, 0ns)) != 0;)
      for (std::size_t j = 0; j < n; ++j) take(first[j]);
  } else {
    ch.state().reap_dead_consumers(true);
  }
  drain();
  ch.state().reap_dead_consumers(true);  // a second look finds nothing more to give back
  drain();
  // A batch ack that died half-way acked some of what it was acking (in entry order).
  for (std::uint64_t seq : acking)
    if (!held.count(seq)) acked.insert(seq);
  for (std::uint64_t seq = 1; seq <= kMessages; ++seq)
    EXPECT_TRUE(acked.count(seq) + held.count(seq) == 1)
        << point << ":" << tc.hit << ": m" << seq << " acked " << acked.count(seq) << " time(s) by the victim, held "
        << held.count(seq) << " time(s) by the survivor";
  for (auto& [seq, m] : held) EXPECT_EQ(s.ack(m), Status::Ok);
  const ChannelStats st = ch.stats();
  ASSERT_EQ(st.groups.size(), 1u);
  EXPECT_EQ(st.groups[0].given_back, 0u);
  // The list's own count too (a count left one too high makes every poll scan the whole list).
  EXPECT_EQ(ch.state().groups[0].given_back.load(), 0u) << point << ":" << tc.hit << ": the give-back count";
  EXPECT_EQ(st.groups[0].in_flight, 0u);
  EXPECT_EQ(st.groups[0].lag_messages, 0u) << "the group drained";
}

INSTANTIATE_TEST_SUITE_P(EachPoint, ConsumerCrash,
                         ::testing::Values(Case{"poll.after_in_flight_store", 1}, Case{"poll.after_in_flight_store", 3},
                                           Case{"poll.after_cursor_cas", 1}, Case{"poll.after_cursor_cas", 3},
                                           Case{"poll.take_given_back.after_hold", 1},
                                           Case{"poll.take_given_back.after_hold", 2},
                                           Case{"poll.take_given_back.after_clear", 1},
                                           Case{"poll.take_given_back.after_clear", 2}, Case{"ack.before_clear", 1},
                                           Case{"ack.before_clear", 3}, Case{"move_held.after_moving_bit", 1},
                                           Case{"move_held.after_moving_bit", 2}, Case{"move_held.after_push", 1},
                                           Case{"move_held.after_push", 2}, Case{"push.after_entry", 1},
                                           Case{"push.after_entry", 2}, Case{"reap.before_release", 1}),
                         case_name);

// The same with the victim as the group's exclusive consumer (plain-store takes), and the
// survivor shared or exclusive.
INSTANTIATE_TEST_SUITE_P(
    Exclusive, ConsumerCrash,
    ::testing::Values(Case{"poll.exclusive.after_in_flight_store", 1, true}, Case{"poll.exclusive.after_in_flight_store", 3, true, true},
                      Case{"poll.exclusive.after_cursor_store", 1, true}, Case{"poll.exclusive.after_cursor_store", 3, true, true},
                      Case{"poll.take_given_back.after_hold", 1, true}, Case{"poll.take_given_back.after_clear", 2, true, true},
                      Case{"ack.before_clear", 3, true}, Case{"move_held.after_moving_bit", 1, true, true},
                      Case{"move_held.after_push", 2, true}),
    case_name);

// Batches: the victim takes runs of up to 3 records with one cursor move (its 1st, 2nd or 3rd
// run: messages 1-3, 4-6, 7-8) and acks them as a batch. With survivor_takes_first, the
// survivor's take confirms the dead victim's run before any reaper sees it: the run's later
// entries must follow its first (the run's take_from, not the first entry, carries it).
INSTANTIATE_TEST_SUITE_P(
    Batch, ConsumerCrash,
    ::testing::Values(Case{"poll.after_in_flight_store", 1, false, false, 3}, Case{"poll.after_in_flight_store", 2, false, false, 3},
                      Case{"poll.after_cursor_cas", 1, false, false, 3}, Case{"poll.after_cursor_cas", 3, false, false, 3},
                      Case{"poll.after_cursor_cas", 1, false, false, 3, true}, Case{"poll.after_cursor_cas", 2, false, true, 3, true},
                      Case{"poll.run.after_first_held", 1, false, false, 3}, Case{"poll.run.after_first_held", 2, false, false, 3, true},
                      Case{"poll.run.after_first_held", 1, false, true, 3}, Case{"poll.after_in_flight_store", 2, false, false, 3, true},
                      Case{"poll.exclusive.after_in_flight_store", 2, true, false, 3},
                      Case{"poll.exclusive.after_cursor_store", 1, true, false, 3},
                      Case{"poll.exclusive.after_cursor_store", 3, true, true, 3},
                      Case{"poll.run.after_first_held", 2, true, false, 3}, Case{"poll.run.after_first_held", 1, true, true, 3},
                      Case{"ack.before_clear", 2, false, false, 3}, Case{"ack.before_clear", 5, true, false, 3}),
    case_name);

}  // namespace
}  // namespace shmq::test

namespace shmq::test {
namespace {

class ConsumerCrashRace : public ChannelTest {};

// 10.6: a consumer killed after storing its in-flight entry, before its cursor CAS, never took the
// message: another consumer takes and acks it; a reaper that comes after must not give it back.
// With an exclusive victim, whose tentative entry is decided by the cursor alone, the shared
// consumer that joins after it must not let its own take of the message make the dead entry look
// taken (admit_consumer() releases the dead exclusive consumer first).
void an_unfinished_take_then_another_consumers_ack(const std::string& name, bool exclusive) {
  {
    Channel ch = Channel::open(name, memory_options());
    ch.ensure_group("g", Start::Earliest);
    Producer p(ch, "p");
    ASSERT_EQ(p.publish("only").status, Status::Ok);
  }
  const pid_t victim = fork_child([&] {
    Channel ch = Channel::open(name, memory_options());
    Consumer c(ch, "g", ConsumerOptions{.exclusive = exclusive});
    detail::arm_crash_point(exclusive ? "poll.exclusive.after_in_flight_store" : "poll.after_in_flight_store", 1);
    (void)c.poll(1s);
    return kChildFailed;  // not reached
  });
  ASSERT_TRUE(wait_child(victim, 30s).killed_by(SIGKILL));
  Channel ch = Channel::open(name, memory_options());
  Consumer s(ch, "g");
  auto m = s.poll(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "only");
  EXPECT_EQ(m->deliveries(), 1u);
  ASSERT_EQ(s.ack(*m), Status::Ok);
  ch.state().reap_dead_consumers(true);
  auto again = s.poll(100ms);
  EXPECT_FALSE(again) << "delivered again after it was acked (deliveries " << (again ? again->deliveries() : 0) << ")";
  EXPECT_EQ(ch.stats().groups[0].given_back, 0u);
}

TEST_F(ConsumerCrashRace, ADeadConsumersUnfinishedTakeIsNotGivenBackAfterAnotherConsumerAckedIt) {
  an_unfinished_take_then_another_consumers_ack(channel_name(), false);
}
TEST_F(ConsumerCrashRace, ADeadExclusiveConsumersUnfinishedTakeIsNotGivenBackAfterAnotherConsumerAckedIt) {
  an_unfinished_take_then_another_consumers_ack(channel_name(), true);
}

// A dead consumer whose release stops at a full give-back list must still have every take it
// never finished settled (release_consumer() settles all of them first), while the cursor and the
// taker word that decide them are as it left them. Found by a hostile review: a dead exclusive
// consumer's take then decided after a shared joiner took the same message (delivered twice), and
// a dead shared consumer's take decided after an exclusive joiner reset the taker word (lost).
// The victim fills the list with delayed nacks, holds one message in entry 0, and dies taking the
// next into entry 1.
constexpr int kFill = static_cast<int>(detail::kGiveBackEntries);
void a_full_list_at_a_death(const std::string& name, bool victim_exclusive, const char* point, bool joiner_exclusive) {
  const auto text_of = [](int i) { return "m" + std::to_string(i); };
  {
    Channel ch = Channel::open(name, memory_options());
    ch.ensure_group("g", Start::Earliest);
    Producer p(ch, "p");
    for (int i = 1; i <= kFill + 2; ++i) ASSERT_EQ(p.publish(text_of(i)).status, Status::Ok);
  }
  const pid_t v = fork_child([&]() -> int {
    Channel ch = Channel::open(name, memory_options());
    Consumer c(ch, "g", ConsumerOptions{.max_in_flight = 2, .exclusive = victim_exclusive});
    for (int i = 1; i <= kFill; ++i) {
      auto m = c.poll(1s);
      CHILD_CHECK(m && m->text() == text_of(i));
      CHILD_CHECK(c.nack(*m, 3s) == Status::Ok);
    }
    auto held = c.poll(1s);
    CHILD_CHECK(held && held->text() == text_of(kFill + 1));
    detail::arm_crash_point(point, 1);
    (void)c.poll(1s);
    return kChildFailed;  // not reached
  });
  ASSERT_TRUE(wait_child(v, 60s).killed_by(SIGKILL));
  Channel ch = Channel::open(name, memory_options());
  std::map<std::string, int> got;
  {
    Consumer s(ch, "g", ConsumerOptions{.exclusive = joiner_exclusive});  // the victim's release stops at the full list
    for (std::uint32_t c = 0; c < ch.state().options.max_consumers; ++c)
      for (std::uint32_t k = 0; k < detail::kMaxInFlight; ++k)
        EXPECT_EQ(ch.state().consumers[c].in_flight[k].load() & detail::kTentativeBit, 0u) << "a tentative entry left after the join";
    const auto drain = [&] {
      while (auto m = s.poll(200ms)) {
        ++got[std::string(m->text())];
        EXPECT_EQ(s.ack(*m), Status::Ok);
      }
    };
    drain();                              // the cursor's records (the list's are delayed)
    std::this_thread::sleep_for(3500ms);  // the delayed nacks come due
    drain();
    ch.state().reap_dead_consumers(true);  // the list has room now: the victim is released
    drain();
  }
  for (int i = 1; i <= kFill + 2; ++i) EXPECT_EQ(got[text_of(i)], 1) << text_of(i) << " delivered " << got[text_of(i)] << " times";
}

TEST_F(ConsumerCrashRace, ADeadExclusiveConsumersTakeIsSettledWhenItsReleaseStopsAtAFullList) {
  a_full_list_at_a_death(channel_name(), true, "poll.exclusive.after_in_flight_store", false);
}
TEST_F(ConsumerCrashRace, ADeadSharedConsumersTakeIsSettledBeforeAnExclusiveJoinerResetsTheTaker) {
  a_full_list_at_a_death(channel_name(), false, "poll.after_cursor_cas", true);
}

using ExclusiveConsumer = ChannelTest;

// Exclusive means the group's only live consumer, both ways, across processes; other groups are
// not concerned; a dead one is reaped as the next joins, and what it held comes back.
TEST_F(ExclusiveConsumer, AnExclusiveConsumerIsItsGroupsOnlyLiveConsumer) {
  const std::string name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  ch.ensure_group("g", Start::Earliest);
  Producer p(ch, "p");
  for (int i = 1; i <= 4; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
  const ConsumerOptions exclusive{.exclusive = true};
  const std::string me = " of live process " + std::to_string(::getpid());
  {
    Consumer shared(ch, "g");
    const std::string why = busy_error_of([&] { Consumer e(ch, "g", exclusive); });
    EXPECT_NE(why.find("cannot add an exclusive consumer to group 'g': a consumer" + me), std::string::npos) << why;
    Consumer other_group(ch, "h", exclusive);  // another group: no conflict
  }
  Pipe ready;
  const pid_t solo = fork_child(
      [&]() -> int {
        Channel c2 = Channel::attach(name);
        Consumer e(c2, "g", exclusive);
        for (int i = 0; i < 2; ++i) CHILD_CHECK(e.poll(1s).has_value());  // held at its death
        CHILD_CHECK(ready.send(Report{Report::Got, 1, 2}));
        for (;;) ::pause();
      },
      60);
  Report r{};
  ASSERT_TRUE(ready.receive(r, 30s));
  const std::string them = " of live process " + std::to_string(solo);
  for (const bool excl : {false, true}) {
    const std::string why = busy_error_of([&] { Consumer c(ch, "g", ConsumerOptions{.exclusive = excl}); });
    EXPECT_NE(why.find("consumer to group 'g': the exclusive consumer" + them + " is the group's only consumer"), std::string::npos)
        << why;
  }
  ASSERT_TRUE(kill_child(solo).killed_by(SIGKILL));
  // Dead, it counts no more: a shared consumer joins and gets all four, the two it held again.
  Consumer shared(ch, "g", ConsumerOptions{.max_in_flight = 8});
  std::map<std::string, unsigned> deliveries;
  while (auto m = shared.poll(200ms)) {
    deliveries[std::string(m->text())] = m->deliveries();
    ASSERT_EQ(shared.ack(*m), Status::Ok);
  }
  EXPECT_EQ(deliveries, (std::map<std::string, unsigned>{{"m1", 2}, {"m2", 2}, {"m3", 1}, {"m4", 1}}));
}

// A removed group's slot is not given to a new group while its exclusive consumer lives (its
// cursor store is plain: it would land in the new group's cursor); once it has left, it is.
TEST_F(ExclusiveConsumer, ARemovedGroupsSlotWaitsForItsExclusiveConsumerToLeave) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options();
  o.max_groups = 1;
  Channel ch = Channel::open(name, o);
  std::optional<Consumer> e(std::in_place, ch, "old", ConsumerOptions{.exclusive = true});
  ASSERT_TRUE(ch.remove_group("old"));
  try {
    ch.ensure_group("new");
    ADD_FAILURE() << "the slot of a removed group went to a new group under its live exclusive consumer";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("1 of them removed but kept until their live exclusive consumer leaves"), std::string::npos)
        << err.what();
  }
  EXPECT_FALSE(e->poll(10ms));
  EXPECT_EQ(e->status(), Status::Closed);
  e.reset();
  ch.ensure_group("new");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("x").status, Status::Ok);
  Consumer c(ch, "new");
  auto m = c.poll(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "x");
}

class DeadLetterCrash : public ChannelTest, public ::testing::WithParamInterface<const char*> {};

// Issue 10.10: a consumer killed after copying a poison message to NAME.dlq and before acking it
// here: the message is given back, the next consumer dead-letters it again, and that copy is a
// Duplicate in NAME.dlq (one copy in all), also when the death came before NAME.dlq's dedup
// window recorded the first copy.
TEST_P(DeadLetterCrash, ADeadLetterMadeAgainAfterACrashIsNotASecondCopy) {
  const std::string point = GetParam();
  const std::string name = channel_name();
  const std::string dlq = name + ".dlq";
  ChannelOptions o = memory_options();
  o.max_deliveries = 1;
  {
    Channel ch = Channel::open(name, o);
    ch.ensure_group("g", Start::Earliest);
    Producer p(ch, "p");
    // Not first: the copy's dedup sequence (from its position) and its inner id then differ.
    ASSERT_EQ(p.publish("first" + std::string(400, '.')).status, Status::Ok);
    ASSERT_EQ(p.publish("poison").status, Status::Ok);
    ASSERT_EQ(p.publish("fine").status, Status::Ok);
  }
  const pid_t victim = fork_child([&] {
    Channel ch = Channel::open(name, o);
    Consumer c(ch, "g");
    auto f = c.poll(1s);
    CHILD_CHECK(f && f->text().substr(0, 5) == "first" && c.ack(*f) == Status::Ok);
    auto m = c.poll(1s);
    CHILD_CHECK(m && m->text() == "poison");
    CHILD_CHECK(c.nack(*m) == Status::Ok);
    detail::arm_crash_point(point, 1);
    (void)c.poll(1s);  // dead-letters it, and dies there
    return kChildFailed;
  });
  ASSERT_TRUE(wait_child(victim, 30s).killed_by(SIGKILL)) << point;
  Channel ch = Channel::open(name, o);
  ch.state().reap_dead_consumers(true);
  {
    Consumer s(ch, "g");
    std::vector<std::string> got;
    while (auto m = s.poll(100ms)) {
      got.emplace_back(m->text());
      EXPECT_EQ(s.ack(*m), Status::Ok);
    }
    EXPECT_EQ(got, std::vector<std::string>{"fine"}) << point << ": the poison message was dead-lettered again";
  }
  const ChannelStats st = ch.stats();
  EXPECT_EQ(st.groups[0].lag_messages + st.groups[0].in_flight + st.groups[0].given_back, 0u) << "the group drained";
  std::map<std::string, unsigned> copies;
  {
    auto d = Channel::attach(dlq);
    Consumer dc(d, "dead-letters");
    while (auto m = dc.poll(100ms)) {
      ++copies[std::string(m->text())];
      EXPECT_EQ(dc.ack(*m), Status::Ok);
    }
  }
  EXPECT_EQ(copies, (std::map<std::string, unsigned>{{"poison", 1}})) << point;
  Channel::remove(dlq);
}

INSTANTIATE_TEST_SUITE_P(EachPoint, DeadLetterCrash, ::testing::Values("dead_letter.after_commit", "dead_letter.after_copy"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           std::string n = p.param;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace shmq::test

namespace shmq::test {
namespace {

class ConsumerCrashTorture : public ChannelTest {};

// Competing consumer processes, each killed at a random pass of a random consumer crash point
// and replaced, until the group is drained: every message is acked exactly once in all (a
// message handed out twice, or again after its ack, would be acked twice; one lost, never).
// Each process writes what it acked to its own file with write(2), which a SIGKILL does not undo.
TEST_F(ConsumerCrashTorture, CompetingConsumersKilledAtRandomPointsAckEveryMessageExactlyOnce) {
  const std::string name = channel_name();
  TestDir dir("consumer-torture", true);
  ChannelOptions o = memory_options();
  o.liveness_interval = 20ms;  // survivors reap the dead quickly
  o.max_deliveries = 1000;     // nothing goes to NAME.dlq: the counts are exact
  const std::uint64_t n = scaled(3000);
  {
    Channel ch = Channel::open(name, o);
    ch.ensure_group("g", Start::Earliest);
    Producer p(ch, "p");
    for (std::uint64_t i = 1; i <= n; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
  }
  const char* points[] = {"poll.after_in_flight_store", "poll.after_cursor_cas", "poll.take_given_back.after_hold",
                          "poll.take_given_back.after_clear", "ack.before_clear", "move_held.after_moving_bit",
                          "move_held.after_push"};  // reap.before_release needs a dead peer: walked above
  const unsigned seed = static_cast<unsigned>(::getpid());
  std::mt19937 rng(seed);
  std::vector<pid_t> live;
  unsigned spawned = 0, killed = 0, finished = 0;
  auto spawn = [&] {
    const char* point = points[rng() % std::size(points)];
    const unsigned hit = 1 + static_cast<unsigned>(rng() % 30);
    const unsigned child_seed = static_cast<unsigned>(rng());
    const std::string file = (dir.path() / ("acked-" + std::to_string(spawned++))).string();
    live.push_back(fork_child([=] {
      const int fd = ::open(file.c_str(), O_CREAT | O_WRONLY | O_APPEND, 0600);
      CHILD_CHECK(fd >= 0);
      std::mt19937 r(child_seed);
      Channel ch = Channel::open(name, o);
      ConsumerOptions co;
      co.max_in_flight = 4;
      Consumer c(ch, "g", co);
      detail::arm_crash_point(point, hit);
      unsigned idle = 0;
      while (idle < 5) {
        auto m = c.poll(30ms);
        if (!m) {
          ++idle;
          continue;
        }
        idle = 0;
        if (r() % 8 == 0) {
          CHILD_CHECK(c.nack(*m) == Status::Ok);
          continue;
        }
        const std::uint64_t seq = m->id().seq;
        CHILD_CHECK(c.ack(*m) == Status::Ok);
        CHILD_CHECK(::write(fd, &seq, sizeof seq) == static_cast<ssize_t>(sizeof seq));
      }
      return kChildOk;
    }, 120));
  };
  const auto deadline = Clock::now() + 200s;
  for (int i = 0; i < 3; ++i) spawn();
  while (!live.empty() && Clock::now() < deadline) {
    for (std::size_t i = 0; i < live.size();) {
      int st = 0;
      const pid_t got = ::waitpid(live[i], &st, WNOHANG);
      if (got != live[i]) {
        ++i;
        continue;
      }
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
        ++killed;
        if (spawned < 400) spawn();  // replaced; the survivors reap it
      } else {
        ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "seed " << seed << ": a consumer failed, status " << st;
        ++finished;
      }
    }
    std::this_thread::sleep_for(2ms);
  }
  for (pid_t pid : live) kill_child(pid);
  ASSERT_TRUE(live.empty()) << "seed " << seed << ": the consumers did not finish in time";
  // The last of them may have died with messages held: a survivor here takes the rest.
  Channel ch = Channel::open(name, o);
  ch.state().reap_dead_consumers(true);
  std::map<std::uint64_t, unsigned> acks;
  {
    Consumer s(ch, "g");
    while (auto m = s.poll(100ms)) {
      ++acks[m->id().seq];
      EXPECT_EQ(s.ack(*m), Status::Ok);
    }
  }
  for (unsigned i = 0; i < spawned; ++i) {
    std::ifstream in(dir.path() / ("acked-" + std::to_string(i)), std::ios::binary);
    std::uint64_t seq = 0;
    while (in.read(reinterpret_cast<char*>(&seq), sizeof seq)) ++acks[seq];
  }
  std::uint64_t missing = 0, twice = 0;
  for (std::uint64_t i = 1; i <= n; ++i) {
    const unsigned a = acks.count(i) ? acks[i] : 0;
    missing += a == 0;
    twice += a > 1;
  }
  std::printf("consumer torture, seed %u: %u processes, %u killed at a crash point, %u finished; %llu messages: "
              "%llu never acked, %llu acked twice\n",
              seed, spawned, killed, finished, static_cast<unsigned long long>(n), static_cast<unsigned long long>(missing),
              static_cast<unsigned long long>(twice));
  EXPECT_EQ(missing, 0u) << "seed " << seed;
  EXPECT_EQ(twice, 0u) << "seed " << seed;
  EXPECT_EQ(acks.size(), n) << "seed " << seed;
  EXPECT_GT(killed, 0u) << "seed " << seed << ": no process was killed; the test proved nothing";
}

}  // namespace
}  // namespace shmq::test
