// CRC32C: the standard check vectors, the hardware path equal to the table everywhere, the mask.
#include "journal/crc32c.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace shmq::journal {
namespace {

std::uint32_t crc_of(const std::vector<std::uint8_t>& v) { return crc32c(0, v.data(), v.size()); }

TEST(Crc32c, MatchesTheStandardCheckVectors) {
  EXPECT_EQ(crc32c(0, "123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c(0, "", 0), 0u);
  // RFC 3720 (iSCSI), appendix B.4.
  EXPECT_EQ(crc_of(std::vector<std::uint8_t>(32, 0x00)), 0x8A9136AAu);
  EXPECT_EQ(crc_of(std::vector<std::uint8_t>(32, 0xff)), 0x62A8AB43u);
  std::vector<std::uint8_t> up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<std::uint8_t>(i);
    down[i] = static_cast<std::uint8_t>(31 - i);
  }
  EXPECT_EQ(crc_of(up), 0x46DD794Eu);
  EXPECT_EQ(crc_of(down), 0x113FDB5Cu);
  const std::vector<std::uint8_t> iscsi_read = {
      0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
      0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  EXPECT_EQ(crc_of(iscsi_read), 0xD9963A56u);
}

TEST(Crc32c, BothPathsMatchTheCheckVector) {
  EXPECT_EQ(crc32c_portable(0, "123456789", 9), 0xE3069283u);
  if (!crc32c_hardware_available()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  EXPECT_EQ(crc32c_hardware(0, "123456789", 9), 0xE3069283u);
}

TEST(Crc32c, ExtendingEqualsTheCrcOfTheConcatenation) {
  const std::string s = "the quick brown fox jumps over the lazy dog, twice over and again";
  const std::uint32_t whole = crc32c(0, s.data(), s.size());
  for (std::size_t cut = 0; cut <= s.size(); ++cut)
    EXPECT_EQ(crc32c(crc32c(0, s.data(), cut), s.data() + cut, s.size() - cut), whole) << "cut " << cut;
}

TEST(Crc32c, HardwareEqualsTableForEveryLengthAndAlignment) {
  if (!crc32c_hardware_available()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> buf(1024 + 16);
  for (auto& b : buf) b = static_cast<std::uint8_t>(rng());
  for (std::size_t align = 0; align < 8; ++align) {
    for (std::size_t n = 0; n <= 1024; ++n) {
      const std::uint32_t init = static_cast<std::uint32_t>(rng());
      ASSERT_EQ(crc32c_hardware(init, buf.data() + align, n), crc32c_portable(init, buf.data() + align, n))
          << "length " << n << ", alignment " << align << ", initial crc " << init;
    }
  }
}

TEST(Crc32c, MaskRoundTripsAndChangesTheValue) {
  std::mt19937 rng(7);
  for (int i = 0; i < 10000; ++i) {
    const std::uint32_t c = static_cast<std::uint32_t>(rng());
    EXPECT_EQ(unmask_crc(mask_crc(c)), c);
    EXPECT_NE(mask_crc(c), c);
  }
  const std::uint32_t c = crc32c(0, "foo", 3);
  EXPECT_NE(mask_crc(mask_crc(c)), c);
  EXPECT_EQ(unmask_crc(unmask_crc(mask_crc(mask_crc(c)))), c);
}

}  // namespace
}  // namespace shmq::journal
