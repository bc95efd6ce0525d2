// The connection, the errors and the status file of shmq_nats (see nats_link.hpp).
#include "bridge/nats_link.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "bridge/bridge.hpp"

namespace shmq::bridge {
namespace detail {

std::string status_text(natsStatus s) {
  std::string text = natsStatus_GetText(s);
  const char* last = nats_GetLastError(nullptr);
  if (last != nullptr && *last != '\0' && text != last) text += ": " + std::string(last);
  return text;
}

std::string js_error_text(natsStatus s, jsErrCode code) {
  std::string text = status_text(s);
  if (code != 0) text += " (JetStream error " + std::to_string(static_cast<int>(code)) + ")";
  return text;
}

void fail(std::errc code, const std::string& what, const std::string& message) {
  throw Error(std::make_error_code(code), "bridge " + what + ": " + message);
}

NatsLink::NatsLink(const std::string& what, const std::string& server, std::chrono::milliseconds connect_timeout,
                   jsOptions* js_options)
    : what_(what), server_(server) {
  if (server.empty()) fail(std::errc::invalid_argument, what, "no server given (--server nats://HOST:PORT)");
  natsStatus s = natsOptions_Create(&opts_);
  // A comma-separated list is split here and given as a server pool (natsOptions_SetURL would take
  // it as one URL).
  std::vector<std::string> urls;
  for (std::size_t at = 0; at <= server.size();) {
    std::size_t comma = server.find(',', at);
    if (comma == std::string::npos) comma = server.size();
    std::string one = server.substr(at, comma - at);
    one.erase(0, one.find_first_not_of(' '));
    one.erase(one.find_last_not_of(' ') + 1);
    if (!one.empty()) urls.push_back(one);
    at = comma + 1;
  }
  std::vector<const char*> url_ptrs;
  for (const auto& u : urls) url_ptrs.push_back(u.c_str());
  if (s == NATS_OK) s = natsOptions_SetServers(opts_, url_ptrs.data(), static_cast<int>(url_ptrs.size()));
  if (s == NATS_OK) s = natsOptions_SetNoRandomize(opts_, false);
  if (s != NATS_OK) {
    const std::string why = status_text(s);
    natsOptions_Destroy(opts_);
    opts_ = nullptr;
    fail(std::errc::invalid_argument, what, "server URL '" + server + "' is not usable: " + why);
  }
  natsOptions_SetTimeout(opts_, connect_timeout.count());
  // Once connected, a lost server is waited for: reconnect forever, every 100 ms, keeping what was
  // published meanwhile in a buffer (what does not fit is refused, and the bridge sends it later).
  natsOptions_SetAllowReconnect(opts_, true);
  natsOptions_SetMaxReconnect(opts_, -1);
  natsOptions_SetReconnectWait(opts_, 100);
  natsOptions_SetReconnectBufSize(opts_, 32 << 20);
  natsOptions_SetPingInterval(opts_, 1000);  // a dead server is noticed within ~2 s
  natsOptions_SetMaxPingsOut(opts_, 2);
  s = natsConnection_Connect(&nc_, opts_);
  if (s != NATS_OK) {
    const std::string why = status_text(s);
    natsOptions_Destroy(opts_);
    opts_ = nullptr;
    nc_ = nullptr;
    fail(s == NATS_NO_SERVER ? std::errc::connection_refused : std::errc::invalid_argument, what,
         "cannot connect to NATS server '" + server + "': " + why);
  }
  s = natsConnection_JetStream(&js_, nc_, js_options);
  if (s != NATS_OK) {
    const std::string why = status_text(s);
    natsConnection_Destroy(nc_);
    natsOptions_Destroy(opts_);
    nc_ = nullptr;
    opts_ = nullptr;
    fail(std::errc::io_error, what, "no JetStream context on '" + server + "': " + why);
  }
}

NatsLink::~NatsLink() {
  if (js_ != nullptr) jsCtx_Destroy(js_);
  if (nc_ != nullptr) {
    natsConnection_Close(nc_);
    natsConnection_Destroy(nc_);
  }
  if (opts_ != nullptr) natsOptions_Destroy(opts_);
}

bool subject_matches(std::string_view pattern, std::string_view subject) {
  auto next = [](std::string_view& rest) {
    const std::size_t dot = rest.find('.');
    const std::string_view token = rest.substr(0, dot);
    rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
    return token;
  };
  bool more_p = !pattern.empty(), more_s = !subject.empty();
  while (more_p && more_s) {
    const bool last_p = pattern.find('.') == std::string_view::npos;
    const bool last_s = subject.find('.') == std::string_view::npos;
    const std::string_view tp = next(pattern), ts = next(subject);
    if (tp == ">") return true;
    if (tp != "*" && tp != ts) return false;
    more_p = !last_p;
    more_s = !last_s;
  }
  return !more_p && !more_s;
}

std::int64_t NatsLink::check_stream(const std::string& stream, const std::string& subject) const {
  jsStreamInfo* si = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  const natsStatus s = js_GetStreamInfo(&si, js_, stream.c_str(), nullptr, &code);
  if (s != NATS_OK) {
    if (code == JSStreamNotFoundErr || s == NATS_NOT_FOUND)
      fail(std::errc::no_such_file_or_directory, what_, "stream '" + stream + "' does not exist on '" + server_ + "'");
    fail(std::errc::io_error, what_,
         "cannot read stream '" + stream + "' on '" + server_ + "' (is JetStream enabled?): " + js_error_text(s, code));
  }
  const std::int64_t max_msg_size = si->Config != nullptr ? si->Config->MaxMsgSize : -1;
  if (!subject.empty() && si->Config != nullptr) {
    bool found = false;
    std::string subjects;
    for (int i = 0; i < si->Config->SubjectsLen; ++i) {
      found |= subject_matches(si->Config->Subjects[i], subject);
      subjects += (i ? ", " : "") + std::string(si->Config->Subjects[i]);
    }
    if (!found) {
      jsStreamInfo_Destroy(si);
      fail(std::errc::invalid_argument, what_,
           "subject '" + subject + "' is not one of stream '" + stream + "''s subjects (" + subjects + ") on '" + server_ + "'");
    }
  }
  jsStreamInfo_Destroy(si);
  return max_msg_size;
}

bool NatsLink::connected() const { return natsConnection_Status(nc_) == NATS_CONN_STATUS_CONNECTED; }

StatusFile::~StatusFile() { ::unlink(path_.c_str()); }

void StatusFile::write(const std::map<std::string, std::string>& fields) {
  std::string text;
  for (const auto& [k, v] : fields) {
    text += k;
    text += '=';
    for (char c : v) text += (c == '\n' || c == '\r') ? ' ' : c;
    text += '\n';
  }
  const std::string tmp = path_ + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return;  // a status file is a courtesy: the bridge goes on without it
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (ok) ::rename(tmp.c_str(), path_.c_str());
  else ::unlink(tmp.c_str());
}

}  // namespace detail

std::string status_path(const std::string& channel, const std::string& role, const std::string& name) {
  return "/dev/shm/shmq-bridge." + channel + "." + role + "." + name;
}

std::string encode_key(std::string_view key) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  out.reserve(key.size());
  for (unsigned char c : key) {
    if (c > 0x20 && c < 0x7f && c != '%') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string decode_key(std::string_view text) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() + 0 && nibble(text[i + 1]) >= 0 && nibble(text[i + 2]) >= 0) {
      out += static_cast<char>(nibble(text[i + 1]) * 16 + nibble(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

namespace {
// "INODE-BIRTH" of PATH (birth time in ns where the file system records it: an inode number freed
// and given to a new directory gets a new birth time), or "" if PATH cannot be looked at.
std::string file_identity(const std::string& path) {
  struct statx sx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_INO | STATX_BTIME, &sx) != 0) return {};
  std::ostringstream id;
  id << std::hex << static_cast<unsigned long long>(sx.stx_ino);
  if (sx.stx_mask & STATX_BTIME)
    id << '-' << static_cast<unsigned long long>(sx.stx_btime.tv_sec) * 1'000'000'000ull + sx.stx_btime.tv_nsec;
  return id.str();
}
}  // namespace

std::string incarnation_of(const Channel& ch) {
  if (ch.options().durability != Durability::Memory) {
    const std::string dir = ch.stats().journal_dir;
    if (std::string id = dir.empty() ? std::string() : file_identity(dir); !id.empty()) return id;
  }
  const std::string segment = "/dev/shm/shmq." + std::string(ch.name());
  const std::string id = file_identity(segment);
  if (id.empty())
    detail::fail(std::errc::no_such_file_or_directory, "out",
                 "channel '" + std::string(ch.name()) + "': cannot stat its segment " + segment);
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  return boot.substr(0, 8) + "-" + id;
}

}  // namespace shmq::bridge
