// `shmq bridge out|in|stat`: the NATS JetStream bridge on the command line (built only with
// shmq_nats; see bridge/README.md).
#pragma once

#include <CLI/CLI.hpp>

namespace shmq::tool {

// Adds the subcommand "bridge" (with out, in, stat) to APP; returns it.
CLI::App* add_bridge_command(CLI::App& app);
// Runs the bridge subcommand that was parsed; returns the exit code.
int cmd_bridge();

}  // namespace shmq::tool
