// Receives COUNT messages from the channel CHANNEL (group "example"), prints and acks each, and
// checks that they are "message 0", "message 1", ... in order. Prints "ready" once it has joined.
//   shmq_example_consumer CHANNEL [COUNT]
#include <shmq/shmq.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHANNEL [COUNT]\n", argv[0]);
    return 2;
  }
  const std::string channel = argv[1];
  const int count = argc > 2 ? std::stoi(argv[2]) : 10;
  try {
    shmq::ChannelOptions options;
    options.durability = shmq::Durability::Memory;
    options.ring_bytes = 1 << 20;
    options.max_message_bytes = 64 << 10;
    shmq::Channel ch = shmq::Channel::open(channel, options);
    shmq::Consumer consumer(ch, "example");
    std::printf("ready\n");
    std::fflush(stdout);

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    int received = 0;
    while (received < count) {
      auto m = consumer.poll(std::chrono::milliseconds(100));
      if (!m) {
        if (std::chrono::steady_clock::now() > deadline) {
          std::fprintf(stderr, "gave up after %d of %d messages (%s)\n", received, count,
                       shmq::to_string(consumer.status()));
          return 1;
        }
        continue;
      }
      const std::string expected = "message " + std::to_string(received);
      if (m->text() != expected) {
        std::fprintf(stderr, "got '%.*s', expected '%s'\n", static_cast<int>(m->text().size()),
                     m->text().data(), expected.c_str());
        return 1;
      }
      std::printf("%.*s\n", static_cast<int>(m->text().size()), m->text().data());
      consumer.ack(*m);
      ++received;
    }
    std::printf("received %d messages\n", received);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
