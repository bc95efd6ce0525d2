// Internal to shmq_nats: the NATS connection and JetStream context of one bridge run, the errors
// they throw, and the status file a running bridge keeps. Not installed.
#pragma once

#include <nats/nats.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <shmq/shmq.hpp>
#include <string>

namespace shmq::bridge::detail {

// "NATS_TIMEOUT (Timeout): <last error text>" for S, with the library's last error if it has one.
std::string status_text(natsStatus s);
std::string js_error_text(natsStatus s, jsErrCode code);

// Throws shmq::Error(errc, "bridge WHAT: MESSAGE").
[[noreturn]] void fail(std::errc code, const std::string& what, const std::string& message);

// One connection with its JetStream context; reconnects forever once connected.
class NatsLink {
 public:
  // Connects to SERVER (a URL or a comma-separated list) within connect_timeout, or throws an Error
  // naming the server and why (refused, no such host, a URL that does not parse).
  NatsLink(const std::string& what, const std::string& server, std::chrono::milliseconds connect_timeout,
           jsOptions* js_options);
  ~NatsLink();
  NatsLink(const NatsLink&) = delete;
  NatsLink& operator=(const NatsLink&) = delete;

  natsConnection* connection() const noexcept { return nc_; }
  jsCtx* js() const noexcept { return js_; }
  // Throws an Error naming STREAM and the server when the stream does not exist (or JetStream is
  // not enabled there). Returns the stream's max_msg_size (-1: none).
  // With SUBJECT (bridge out): also throws when SUBJECT is not one of the stream's subjects, which
  // would leave every publish unanswered (no responders) for ever.
  std::int64_t check_stream(const std::string& stream, const std::string& subject = {}) const;
  bool connected() const;

 private:
  std::string what_;
  std::string server_;
  natsOptions* opts_ = nullptr;
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

// Whether SUBJECT is matched by the subject filter PATTERN ('*' one token, '>' the rest).
bool subject_matches(std::string_view pattern, std::string_view subject);

// The status file of a running bridge: key=value lines, replaced whole (write, rename).
class StatusFile {
 public:
  explicit StatusFile(std::string path) : path_(std::move(path)) {}
  ~StatusFile();
  void write(const std::map<std::string, std::string>& fields);

 private:
  std::string path_;
};

}  // namespace shmq::bridge::detail
