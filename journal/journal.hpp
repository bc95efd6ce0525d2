// shmq::journal: the write-ahead journal of a channel. It knows files and records only (no shared
// memory, no groups): segment files of CRC32C-framed records (format.hpp), the Writer that appends
// and recovers them (writer.hpp), the Reader and verify() (reader.hpp), checkpoints
// (checkpoint.hpp) and retention (retention.hpp). journal/README.md says what it promises.
#pragma once

#include "journal/checkpoint.hpp"
#include "journal/crc32c.hpp"
#include "journal/format.hpp"
#include "journal/reader.hpp"
#include "journal/retention.hpp"
#include "journal/writer.hpp"
