// Batches: Consumer::poll_batch() takes a run of committed records with one move of the group's
// cursor, ack() of a batch and ack_up_to() let go of many at once. Crashes inside them are in
// consumer_crash_test (its Batch cases); this is what a user sees.

#include <atomic>
#include <map>
#include <thread>

#include "ringbuffer/record_ring.hpp"
#include "shm/channel_state.hpp"
#include "shm/crash_point.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

class Batch : public ChannelTest {};

std::vector<std::string> texts(std::span<const Message> ms) {
  std::vector<std::string> t;
  for (const Message& m : ms) t.emplace_back(m.text());
  return t;
}

void publish_n(Producer& p, int from, int to) {
  for (int i = from; i <= to; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
}

TEST_F(Batch, PollBatchReturnsCommittedRecordsInOrderWithinTheSpanTheInFlightLimitAndOneRun) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g", ConsumerOptions{.max_in_flight = 10});
  Producer p(ch, "p");
  publish_n(p, 1, 100);
  std::vector<Message> got(32);
  ASSERT_EQ(c.poll_batch(got), 10u) << "max_in_flight 10";
  EXPECT_EQ(texts(std::span(got).first(3)), (std::vector<std::string>{"m1", "m2", "m3"}));
  EXPECT_EQ(got[9].text(), "m10");
  EXPECT_EQ(c.in_flight(), 10u);
  EXPECT_EQ(c.poll_batch(got), 0u);
  EXPECT_EQ(c.status(), Status::WouldBlock);
  EXPECT_EQ(c.ack(std::span<const Message>(got.data(), 10)), 10u);
  EXPECT_EQ(c.in_flight(), 0u);
  EXPECT_EQ(c.ack(std::span<const Message>(got.data(), 10)), 0u) << "acked already";
  std::vector<Message> one(1);
  ASSERT_EQ(c.poll_batch(one), 1u);
  EXPECT_EQ(one[0].text(), "m11");
  ASSERT_EQ(c.ack(one[0]), Status::Ok);

  Consumer wide(ch, "h", ConsumerOptions{.max_in_flight = 256});
  std::vector<Message> many(100);
  ASSERT_EQ(wide.poll_batch(many), 64u) << "one move of the cursor takes at most 64";
  EXPECT_EQ(many[63].text(), "m64");
  ASSERT_EQ(wide.poll_batch(std::span(many).subspan(64)), 36u);
  EXPECT_EQ(many[99].text(), "m100");
  EXPECT_EQ(wide.ack_up_to(many[99]), 100u);
  EXPECT_EQ(wide.poll_batch(many), 0u);
  EXPECT_EQ(wide.status(), Status::Timeout);
  EXPECT_EQ(wide.poll_batch(std::span<Message>()), 0u) << "an empty span";
}

TEST_F(Batch, RedeliveriesComeFirstThenARunFromTheCursor) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  publish_n(p, 1, 10);
  std::vector<Message> got(3);
  ASSERT_EQ(c.poll_batch(got), 3u);
  ASSERT_EQ(c.nack(got[1]), Status::Ok);
  std::vector<Message> next(4);
  ASSERT_EQ(c.poll_batch(next), 4u);
  EXPECT_EQ(texts(next), (std::vector<std::string>{"m2", "m4", "m5", "m6"}));
  EXPECT_EQ(next[0].deliveries(), 2u);
  EXPECT_EQ(next[1].deliveries(), 1u);
}

TEST_F(Batch, AckUpToAcksWhatThisConsumerGotUpToTheMessageInTheOrderItGotThem) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Consumer other(ch, "g");
  Producer p(ch, "p");
  publish_n(p, 1, 6);
  std::vector<Message> got(4);
  ASSERT_EQ(c.poll_batch(got), 4u);  // m1..m4
  ASSERT_EQ(c.nack(got[1]), Status::Ok);
  auto again = c.poll();  // m2 again, got after m4
  ASSERT_TRUE(again);
  ASSERT_EQ(again->text(), "m2");
  auto theirs = other.poll();  // m5, held by another consumer
  ASSERT_TRUE(theirs);
  EXPECT_EQ(c.ack_up_to(*theirs), 0u) << "not held by this consumer";
  EXPECT_EQ(c.ack_up_to(got[2]), 2u) << "m1 and m3: not m4 (got after m3), not m2 (got again after m4)";
  EXPECT_EQ(c.ack(got[0]), Status::NotHeld);
  EXPECT_EQ(c.in_flight(), 2u);
  EXPECT_EQ(c.ack_up_to(*again), 2u) << "m4, then m2";
  EXPECT_EQ(c.in_flight(), 0u);
  EXPECT_EQ(other.ack(*theirs), Status::Ok);
  // A batch ack counts only what this consumer holds.
  auto m6 = c.poll();
  ASSERT_TRUE(m6);
  const Message both[2] = {*m6, *theirs};
  EXPECT_EQ(c.ack(std::span<const Message>(both)), 1u);
}

TEST_F(Batch, PollBatchWaitsForTheFirstMessageOnly) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  std::vector<Message> got(8);
  EXPECT_EQ(c.poll_batch(got, 20ms), 0u);
  EXPECT_EQ(c.status(), Status::Timeout);
  std::thread late([&] {
    std::this_thread::sleep_for(50ms);
    ASSERT_EQ(p.publish("late").status, Status::Ok);
  });
  const auto t0 = Clock::now();
  ASSERT_EQ(c.poll_batch(got, 10s), 1u);
  EXPECT_LT(Clock::now() - t0, 9s) << "returned with one message rather than waiting to fill the batch";
  EXPECT_EQ(got[0].text(), "late");
  late.join();
}

TEST_F(Batch, AGroupRemovedWhileABatchIsAwaitedEndsTheWaitClosed) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g", ConsumerOptions{.exclusive = true});
  std::thread remover([&] {
    std::this_thread::sleep_for(50ms);
    ch.remove_group("g");
  });
  std::vector<Message> got(8);
  EXPECT_EQ(c.poll_batch(got, 10s), 0u);
  EXPECT_EQ(c.status(), Status::Closed);
  remover.join();
}

// A record whose fields break the layout (its key longer than the record) in the middle of what
// a batch would take: the batch ends before it, the next call reports it (naming the position)
// and the group moves past it; nothing before or after it is lost.
TEST_F(Batch, ARecordThatBreaksTheLayoutEndsTheBatchAndTheNextCallReportsIt) {
  for (bool exclusive : {false, true}) {
    SCOPED_TRACE(exclusive ? "exclusive" : "shared");
    const std::string name = channel_name() + (exclusive ? "x" : "s");
    Channel ch = Channel::open(name, memory_options());
    Consumer c(ch, "g", ConsumerOptions{.exclusive = exclusive});
    Producer p(ch, "p");
    std::uint64_t bad_pos = 0;
    for (int i = 1; i <= 5; ++i) {
      const Published r = p.publish("m" + std::to_string(i));
      ASSERT_EQ(r.status, Status::Ok);
      if (i == 3) bad_pos = r.position;
    }
    auto* h = reinterpret_cast<ring::RecordHeader*>(ch.state().ring->at(bad_pos));
    ring::store_shared(h->key_len, 1000u);
    std::vector<Message> got(8);
    ASSERT_EQ(c.poll_batch(got), 2u);
    EXPECT_EQ(texts(std::span(got).first(2)), (std::vector<std::string>{"m1", "m2"}));
    try {
      (void)c.poll_batch(got);
      ADD_FAILURE() << "the corrupt record was not reported";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("corrupt record at position " + std::to_string(bad_pos)), std::string::npos) << e.what();
    }
    EXPECT_EQ(c.status(), Status::Corrupt);
    ASSERT_EQ(c.poll_batch(got), 2u);
    EXPECT_EQ(texts(std::span(got).first(2)), (std::vector<std::string>{"m4", "m5"}));
    EXPECT_EQ(c.in_flight(), 4u) << "m1, m2, m4, m5; the corrupt one is not held";
    Channel::remove(name);
  }
}

// A give-back entry that names no record (a position inside another record), met while a batch
// already holds messages: the batch ends with what it holds, and the next call reports the entry
// (naming its position), which is dropped; the group goes on.
TEST_F(Batch, ABadGiveBackEntryMetInsideABatchIsReportedByTheNextCall) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  publish_n(p, 1, 5);
  std::vector<Message> got(2);
  ASSERT_EQ(c.poll_batch(got), 2u);
  ASSERT_EQ(c.nack(got[0]), Status::Ok);  // m1 on the list
  ASSERT_EQ(c.nack(got[1]), Status::Ok);  // m2 on the list
  detail::GroupSlot& g = ch.state().groups[0];
  int scribbled = -1;
  for (int i = 0; i < 1024 && scribbled < 0; ++i)
    if (g.give_back[i].position_plus1.load() == got[1].position() + 1) scribbled = i;
  ASSERT_GE(scribbled, 0);
  const std::uint64_t bad = got[1].position() + 8;  // inside m2's record: no record starts there
  g.give_back[scribbled].position_plus1.store(bad + 1);
  std::vector<Message> batch(4);
  ASSERT_EQ(c.poll_batch(batch), 1u) << "m1, then the bad entry ends the batch";
  EXPECT_EQ(batch[0].text(), "m1");
  EXPECT_EQ(batch[0].deliveries(), 2u);
  try {
    (void)c.poll_batch(batch);
    ADD_FAILURE() << "the bad give-back entry was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a message given back at position " + std::to_string(bad) + " is no longer a record"), std::string::npos) << e.what();
  }
  EXPECT_EQ(c.status(), Status::Corrupt);
  ASSERT_EQ(c.poll_batch(batch), 3u);
  EXPECT_EQ(texts(std::span(batch).first(3)), (std::vector<std::string>{"m3", "m4", "m5"})) << "m2's entry was the scribbled one";
  EXPECT_EQ(g.given_back.load(), 0u);
}

// A poll takes a given-back message m1 from the list and, in the same scan, finds a bad entry:
// it reports the bad entry first, so m1 is not handed out by this call. It used to put m1 back on
// the list; if other consumers had filled the list meanwhile, that failed and m1's entry was let
// go of anyway: m1 was lost (never delivered again). Here four consumers fill the list (1024
// nacks) at that very step (a test hook); m1 must be the next call's first message.
TEST_F(Batch, AGivenBackMessageThatACallDoesNotHandOutIsNotLostWhenTheListFilledMeanwhile) {
  ASSERT_TRUE(detail::crash_points_enabled());
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  constexpr int kFill = detail::kGiveBackEntries;  // 4 consumers x 256 held
  constexpr int kLast = 2 + kFill + 4;
  publish_n(p, 1, kLast);
  std::vector<Message> got(2);
  ASSERT_EQ(c.poll_batch(got), 2u);  // m1, m2
  static std::vector<std::unique_ptr<Consumer>>* fillers = nullptr;
  static std::vector<Message>* held = nullptr;
  std::vector<std::unique_ptr<Consumer>> f;
  std::vector<Message> h;
  for (int i = 0; i < 4; ++i) {
    f.push_back(std::make_unique<Consumer>(ch, "g", ConsumerOptions{.max_in_flight = 256}));
    std::vector<Message> b(64);
    for (int j = 0; j < 4; ++j) {
      ASSERT_EQ(f.back()->poll_batch(b), 64u);
      h.insert(h.end(), b.begin(), b.end());
    }
  }
  ASSERT_EQ(c.nack(got[0]), Status::Ok);  // m1 on the list
  ASSERT_EQ(c.nack(got[1]), Status::Ok);  // m2 on the list, then scribbled: a bad entry
  detail::GroupSlot& g = ch.state().groups[0];
  bool scribbled = false;
  for (auto& e : g.give_back)
    if (!scribbled && e.position_plus1.load() == got[1].position() + 1) {
      e.position_plus1.store(got[1].position() + 2);  // not a multiple of 8: no record position
      scribbled = true;
    }
  ASSERT_TRUE(scribbled);
  fillers = &f;
  held = &h;
  detail::g_poll_hook = [](detail::PollStep) {
    detail::g_poll_hook = nullptr;  // once
    for (const Message& m : *held)
      for (auto& fc : *fillers)
        if (fc->nack(m) == Status::Ok) break;
  };
  std::vector<Message> batch(4);
  try {
    (void)c.poll_batch(batch);
    ADD_FAILURE() << "the bad give-back entry was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("which is not a record position"), std::string::npos) << e.what();
  }
  detail::g_poll_hook = nullptr;
  EXPECT_EQ(g.given_back.load(), static_cast<std::uint32_t>(kFill)) << "the fillers' nacks filled the list";
  f.clear();
  std::size_t n = c.poll_batch(batch);
  ASSERT_GE(n, 1u);
  EXPECT_EQ(batch[0].text(), "m1") << "the message the last call took and did not hand out comes first";
  EXPECT_EQ(batch[0].deliveries(), 2u);
  std::map<std::string, int> seen;
  for (; n != 0; n = c.poll_batch(batch, std::chrono::milliseconds(0))) {
    for (std::size_t i = 0; i < n; ++i) ++seen[std::string(batch[i].text())];
    ASSERT_EQ(c.ack(std::span<const Message>(batch.data(), n)), n);
  }
  for (int i = 1; i <= kLast; ++i) {
    if (i == 2) continue;  // m2's entry was the scribbled one
    EXPECT_EQ(seen["m" + std::to_string(i)], 1) << "m" << i;
  }
  EXPECT_EQ(g.given_back.load(), 0u);
}

// Leaves C's next message kept (ConsumerState::keep()): C polls it and nacks it, a free entry of
// the give-back list is scribbled with a position no record starts at, and C's next poll takes
// the message and then reports that entry. Returns the message's position.
std::uint64_t keep_next(Channel& ch, Consumer& c) {
  auto m = c.poll(std::chrono::seconds(1));
  if (!m || c.nack(*m) != Status::Ok) {
    ADD_FAILURE() << "no message to keep";
    return 0;
  }
  for (auto& e : ch.state().groups[0].give_back)
    if (e.position_plus1.load() == 0) {
      e.position_plus1.store(m->position() + 2);  // not a multiple of 8
      break;
    }
  try {
    (void)c.poll(std::chrono::milliseconds(0));
    ADD_FAILURE() << "the bad give-back entry was not reported";
  } catch (const Error&) {
  }
  return m->position();
}

// From a hostile review of the kept message: (1) its group removed, it no longer holds the ring
// back (it did until the consumer was destroyed: every producer stalled once the ring wrapped);
// (2) it is not counted by in_flight(), which counts what the user holds.
TEST_F(Batch, AKeptMessageOfARemovedGroupNoLongerHoldsTheRingBack) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  publish_n(p, 1, 3);
  const std::uint64_t m1 = keep_next(ch, c);
  EXPECT_EQ(c.in_flight(), 0u) << "kept, not handed out";
  EXPECT_EQ(ch.state().gate(), m1) << "kept, it holds the ring back";
  ASSERT_TRUE(ch.remove_group("g"));
  std::vector<Message> batch(4);
  EXPECT_EQ(c.poll_batch(batch), 0u);
  EXPECT_EQ(c.status(), Status::Closed);
  EXPECT_GT(ch.state().gate(), m1) << "the removed group's kept message still held the ring back";
}

// From the same review: with a visibility timeout, (1) a kept message that a reaper gave back is
// taken from the list by the next poll, which said WouldBlock (its one entry looked taken) before;
// (2) a kept message is handed out with its timeout counted from then, not from the take before.
TEST_F(Batch, AKeptMessageHandsOutWithAFreshVisibilityTimeoutAndOneGivenBackMeanwhileIsTakenAgain) {
  ChannelOptions o = memory_options();
  o.liveness_interval = 50ms;
  Channel ch = Channel::open(channel_name(), o);
  Producer p(ch, "p");
  publish_n(p, 1, 3);
  {
    Consumer c(ch, "g", ConsumerOptions{.max_in_flight = 1, .visibility_timeout = 100ms});
    keep_next(ch, c);
    std::this_thread::sleep_for(200ms);
    ch.state().reap_dead_consumers(true);  // gives the kept m1 back: held past its timeout
    auto m = c.poll(std::chrono::milliseconds(0));
    ASSERT_TRUE(m) << "status " << to_string(c.status());
    EXPECT_EQ(m->text(), "m1");
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  Consumer c(ch, "g", ConsumerOptions{.visibility_timeout = 300ms});
  keep_next(ch, c);  // m2, taken (its timeout starts) and kept
  std::this_thread::sleep_for(200ms);
  auto m = c.poll(std::chrono::milliseconds(0));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "m2");
  std::this_thread::sleep_for(150ms);  // 350 ms after the take, 150 ms after it was handed out
  ch.state().reap_dead_consumers(true);
  EXPECT_EQ(c.ack(*m), Status::Ok) << "given back 150 ms after it was handed out, with a 300 ms timeout";
}

// A consumer B of group g reads the cursor (N, taker(C, 0)) after C's take, and is descheduled
// before its confirm_taker(N, taker). Meanwhile C leaves; its slot goes to D, a consumer of
// another group h whose cursor is behind N, and D dies in its take of the record at P < N (entry
// 0, the first entry of a fresh consumer, as C's was). B's confirm_taker() then confirms D's run:
// it checks the position against g's cursor and the entry, never that the slot is still the
// group's (and generation's) consumer. The reaper keeps D's tentative entry as taken and gives it
// back to h, whose cursor delivers the same record again: twice.
TEST_F(Batch, ADelayedConfirmDoesNotConfirmTheRunOfTheConsumerThatReusedTheSlotInAnotherGroup) {
  ASSERT_TRUE(detail::crash_points_enabled());
  const std::string name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  ch.ensure_group("h", Start::Earliest);  // stays at the first record
  ch.ensure_group("g", Start::Earliest);
  {
    Producer p(ch, "p");
    for (int i = 1; i <= 3; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
  }
  detail::ChannelState& s = ch.state();
  const int gi = [&] {
    detail::RegistryLock lock(s);
    return s.find_group("g");
  }();
  ASSERT_GE(gi, 0);
  std::uint64_t seen_next = 0, seen_taker = 0;
  {
    Consumer c(ch, "g");
    auto m = c.poll();
    ASSERT_TRUE(m);
    ASSERT_EQ(m->text(), "m1");
    // What B reads: next first, then the taker.
    seen_next = s.groups[gi].next.load();
    seen_taker = s.groups[gi].next_taker.load();
    ASSERT_EQ((seen_taker >> 8) & 0xffffff, 1u) << "C is consumer slot 0";
    ASSERT_EQ(seen_taker & 0xff, 0u) << "C took into entry 0";
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }  // C leaves: slot 0 is free
  const pid_t d = fork_child([&] {
    Channel c2 = Channel::open(name, memory_options());
    Consumer dc(c2, "h");
    CHILD_CHECK(c2.state().consumers[0].state.load() == detail::kActive);  // D has slot 0
    detail::arm_crash_point("poll.after_in_flight_store", 1);
    (void)dc.poll(1s);
    return kChildFailed;  // not reached
  });
  ASSERT_TRUE(wait_child(d, 30s).killed_by(SIGKILL));
  ASSERT_NE(s.consumers[0].take_from.load() & detail::kTentativeBit, 0u) << "D died in its take";
  ASSERT_LT(detail::held_position(s.consumers[0].take_from.load()), seen_next);
  // B, scheduled again, makes the call it was about to make.
  s.confirm_taker(static_cast<std::uint32_t>(gi), seen_next, seen_taker);
  s.reap_dead_consumers(true);
  Consumer e(ch, "h");
  std::map<std::string, int> got;
  while (auto m = e.poll(200ms)) ++got[std::string(m->text())];  // held, not acked: a copy shows twice
  for (int i = 1; i <= 3; ++i) {
    const std::string t = "m" + std::to_string(i);
    EXPECT_EQ(got[t], 1) << t << " delivered " << got[t] << " times to group h";
  }
}

// A poison message met inside a batch goes to NAME.dlq and is acked there; the batch goes on
// with the run behind it, and nothing of the batch is left held or lost.
TEST_F(Batch, APoisonMessageInsideABatchIsDeadLetteredAndTheBatchGoesOn) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options();
  o.max_deliveries = 1;
  Channel ch = Channel::open(name, o);
  Consumer c(ch, "g", ConsumerOptions{.max_in_flight = 8});
  Producer p(ch, "p");
  for (int i = 1; i <= 6; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
  std::vector<Message> got(8);
  ASSERT_EQ(c.poll_batch(std::span(got).first(2)), 2u);  // m1, m2
  ASSERT_EQ(c.nack(got[0]), Status::Ok);                 // m1: its one delivery made
  ASSERT_EQ(c.ack(got[1]), Status::Ok);
  ASSERT_EQ(c.poll_batch(got), 4u) << "m1 dead-lettered, then the run m3..m6";
  EXPECT_EQ(got[0].text(), "m3");
  EXPECT_EQ(got[3].text(), "m6");
  EXPECT_EQ(c.in_flight(), 4u) << "the dead letter is not held";
  EXPECT_EQ(c.ack_up_to(got[3]), 4u);
  EXPECT_EQ(c.in_flight(), 0u);
  Channel dlq = Channel::attach(name + ".dlq");
  Consumer d(dlq, "dead-letters");
  auto dead = d.poll(1s);
  ASSERT_TRUE(dead);
  EXPECT_EQ(dead->text(), "m1");
  const ChannelStats st = ch.stats();
  EXPECT_EQ(st.groups[0].given_back, 0u);
  EXPECT_EQ(st.groups[0].in_flight, 0u);
}

// Visibility timeout with batches: a batch held too long goes back whole; the slow consumer's
// batch ack and ack_up_to ack nothing, its entries come back to it, and the other consumer gets
// each message once more.
TEST_F(Batch, ABatchHeldPastTheVisibilityTimeoutGoesBackAndItsAcksAckNothing) {
  ChannelOptions o = memory_options();
  o.liveness_interval = 50ms;
  Channel ch = Channel::open(channel_name(), o);
  ch.ensure_group("g");
  Producer p(ch, "p");
  for (int i = 1; i <= 6; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
  Consumer slow(ch, "g", ConsumerOptions{.max_in_flight = 6, .visibility_timeout = 100ms});
  std::vector<Message> held(6);
  ASSERT_EQ(slow.poll_batch(held), 6u);
  std::this_thread::sleep_for(200ms);
  ch.state().reap_dead_consumers(true);
  EXPECT_EQ(slow.ack(std::span<const Message>(held).first(3)), 0u);
  EXPECT_EQ(slow.ack_up_to(held[5]), 0u) << "m4..m6 were given back too";
  Consumer other(ch, "g");
  std::vector<Message> again(8);
  ASSERT_EQ(other.poll_batch(again), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(again[i].text(), "m" + std::to_string(i + 1));
    EXPECT_EQ(again[i].deliveries(), 2u);
  }
  EXPECT_EQ(other.ack_up_to(again[5]), 6u);
  ASSERT_EQ(p.publish("m7").status, Status::Ok);
  std::vector<Message> next(6);
  ASSERT_EQ(slow.poll_batch(next), 1u) << "its entries are free again";
  EXPECT_EQ(next[0].text(), "m7");
  EXPECT_EQ(slow.ack(next[0]), Status::Ok);
}

// Competing consumers in three processes, two taking batches (one of them killed while it holds
// a batch) and one taking single messages, while the producer wraps a small ring many times
// (padding inside runs): every message is acked exactly once, and only what the dead one held
// comes back.
TEST_F(Batch, CompetingBatchConsumersAckEveryMessageOnceWhenOneIsKilled) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options(64 << 10, 1024);
  o.liveness_interval = 100ms;
  const std::uint64_t n = scaled(300000);
  Channel ch = Channel::open(name, o);
  ch.ensure_group("g");
  const AckTally tally(n);
  const auto payload_of = [](std::uint64_t seq) { return "message-" + std::to_string(seq); };
  Pipe victim_ready;
  auto consume = [&](unsigned batch, bool victim) {
    return [&, batch, victim] {
      Channel c2 = Channel::open(name, o);
      Consumer c(c2, "g", ConsumerOptions{.wait = Wait::Block, .max_in_flight = 32});
      std::vector<Message> got(batch);
      std::uint64_t polled = 0;
      auto idle_since = Clock::now();
      for (;;) {
        const std::size_t k = c.poll_batch(got, 50ms);
        if (k == 0) {
          if (!victim && Clock::now() - idle_since > 3s) return kChildOk;  // drained
          continue;
        }
        idle_since = Clock::now();
        for (std::size_t j = 0; j < k; ++j) {
          const std::uint64_t seq = got[j].id().seq;
          CHILD_CHECK(seq >= 1 && seq <= n);
          CHILD_CHECK(got[j].text() == payload_of(seq));
          if (j > 0) CHILD_CHECK(got[j].position() > got[j - 1].position() || got[j].deliveries() > 1 || got[j - 1].deliveries() > 1);
        }
        polled += k;
        // Hold this batch, and wait to die. Its share of the messages depends on the scheduler: under
        // ASan (n = 30000) it polled 800-3800 before the other two had drained the rest, so a fixed
        // 5000 was not reached in 8 of 14 runs on 2 vCPUs, with the old consume code and the new.
        if (victim && polled >= n / 60 && k > 1) {
          victim_ready.send(1);
          ::pause();
        }
        const std::size_t acked = (polled & 1) ? c.ack_up_to(got[k - 1]) : c.ack(std::span<const Message>(got.data(), k));
        CHILD_CHECK(acked == k);
        for (std::size_t j = 0; j < k; ++j) tally.acked(got[j]);
      }
    };
  };
  const pid_t v = fork_child(consume(16, true), 120);
  const pid_t a = fork_child(consume(8, false), 120);
  const pid_t b = fork_child(consume(1, false), 120);
  VictimKiller killer(v, victim_ready);
  publish_sequences(ch, n, payload_of);
  killer.join();
  EXPECT_TRUE(killer.killed());
  EXPECT_TRUE(wait_child(a, 90s).ok());
  EXPECT_TRUE(wait_child(b, 90s).ok());
  const AckTally::Totals t = tally.totals();
  EXPECT_EQ(t.missing, 0u);
  EXPECT_EQ(t.doubled, 0u);
  EXPECT_GE(t.again, 2u) << "the victim held a batch of at least two";
  EXPECT_LE(t.again, 16u) << "only what the victim held comes back";
}

}  // namespace
}  // namespace shmq::test
