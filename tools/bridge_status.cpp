#include "tools/bridge_status.hpp"

#include <signal.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tools/output.hpp"

namespace shmq::tool {

std::vector<BridgeRow> bridge_rows(std::string_view channel) {
  std::vector<BridgeRow> rows;
  std::error_code ec;
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    if (++files > 100000) break;  // a bound of our own over a directory anybody may fill
    const std::string file = e.path().filename().string();
    if (file.rfind("shmq-bridge.", 0) != 0 || (file.size() > 4 && file.substr(file.size() - 4) == ".tmp")) continue;
    BridgeRow row;
    std::ifstream in(e.path());
    std::string line;
    for (int i = 0; i < 64 && std::getline(in, line); ++i) {
      if (line.size() > 4096) continue;
      const auto eq = line.find('=');
      if (eq != std::string::npos) row[line.substr(0, eq)] = line.substr(eq + 1);
    }
    if (!channel.empty() && row["channel"] != channel) continue;
    const int pid = std::atoi(row["pid"].c_str());
    row["alive"] = pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM) ? "yes" : "no";
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string bridge_rows_json(const std::vector<BridgeRow>& rows) {
  std::vector<std::string> items;
  for (const BridgeRow& r : rows) {
    JsonObject o;
    for (const auto& [k, v] : r) o.str(k, v);
    items.push_back(o.done());
  }
  return json_array(items);
}

void print_bridge_rows(std::FILE* out, const std::vector<BridgeRow>& rows, const char* indent) {
  Table t({"ROLE", "CHANNEL", "GROUP/CONSUMER", "ALIVE", "LAG", "IN FLIGHT", "FORWARDED", "RETRIES", "DLQ", "LAST ERROR"});
  for (BridgeRow r : rows) {
    const std::string who = r["role"] == "out" ? r["group"] + " -> " + r["stream"] : r["stream"] + "/" + r["consumer"];
    t.add({r["role"], r["channel"], who, r["alive"], r["lag"], r["in_flight"], r["forwarded"], r["retries"],
           r["dead_lettered"], r["last_error"]});
  }
  t.print(out, indent);
}

}  // namespace shmq::tool
