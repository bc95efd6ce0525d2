// The status of the NATS bridges running on this host, read from the files they keep
// (/dev/shm/shmq-bridge.*, key=value lines, see bridge/bridge.hpp status_path()). Plain file
// reading, so that `shmq stat` and `shmq top` show bridges also in a tool built without libnats.
#pragma once

#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace shmq::tool {

using BridgeRow = std::map<std::string, std::string>;  // key -> value, plus "alive" (yes/no)

// The bridges of CHANNEL (all of them when empty).
std::vector<BridgeRow> bridge_rows(std::string_view channel);
// A JSON array of objects, one per row.
std::string bridge_rows_json(const std::vector<BridgeRow>& rows);
// A table: role, channel, group or consumer, alive, lag, in flight, forwarded, retries, dead letters, last error.
void print_bridge_rows(std::FILE* out, const std::vector<BridgeRow>& rows, const char* indent = "");

}  // namespace shmq::tool
