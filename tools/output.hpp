// What the subcommands print: aligned text tables, JSON values, human-readable sizes and rates.
#pragma once

#include <concepts>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace shmq::tool {

// A text table: columns as wide as their widest cell, two spaces apart, the last column unpadded.
// A row with fewer cells than the header lets its last cell run to the end of the line (an error).
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print(std::FILE* out, std::string_view indent = {}) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// TEXT as a JSON string, quotes included. Valid UTF-8 passes through; control characters are
// escaped; a byte that is not part of valid UTF-8 becomes U+FFFD, so the output is always valid JSON.
std::string json_string(std::string_view text);

// A JSON object built field by field: {"a":1,"b":"x"}.
class JsonObject {
 public:
  JsonObject& str(std::string_view key, std::string_view value) { return raw(key, json_string(value)); }
  template <std::integral T>
  JsonObject& num(std::string_view key, T value) {
    if constexpr (std::same_as<T, bool>) return raw(key, value ? "true" : "false");
    else return raw(key, std::to_string(value));
  }
  JsonObject& real(std::string_view key, double value);
  JsonObject& raw(std::string_view key, std::string_view json);  // VALUE is JSON already
  std::string done() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

// [a,b,c] from JSON values.
std::string json_array(const std::vector<std::string>& values);

std::string human_bytes(std::uint64_t bytes);  // "512 B", "1.0 KiB", "64 MiB"
std::string human_rate(double per_second);     // "950", "12.3k", "1.20M"
std::string fixed(double value, int decimals);  // "%.*f"

// Nanoseconds since the epoch as UTC: "2024-05-01T12:34:56.123456Z".
std::string utc_time(std::uint64_t ns);
// TEXT for one line of a terminal: quotes, backslashes and bytes that are not printable ASCII or
// valid UTF-8 escaped (\n, \t, \xNN), cut to at most MAX bytes of input with "..." (0: no limit).
std::string printable(std::string_view text, std::size_t max = 0);

}  // namespace shmq::tool
