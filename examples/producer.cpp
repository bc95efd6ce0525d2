// Publishes COUNT text messages ("message 0", "message 1", ...) to the channel CHANNEL.
//   shmq_example_producer CHANNEL [COUNT]
#include <shmq/shmq.hpp>

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
    options.durability = shmq::Durability::Memory;  // the segment only: no journal
    options.ring_bytes = 1 << 20;
    options.max_message_bytes = 64 << 10;
    shmq::Channel ch = shmq::Channel::open(channel, options);
    shmq::Producer producer(ch, "example-producer");
    for (int i = 0; i < count; ++i) {
      const auto published = producer.publish("message " + std::to_string(i));
      if (published.status != shmq::Status::Ok) {
        std::fprintf(stderr, "publish %d: %s\n", i, shmq::to_string(published.status));
        return 1;
      }
    }
    std::printf("published %d messages\n", count);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
