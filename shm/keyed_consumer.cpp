// KeyedConsumer: a Consumer and a store of processed keys (include/shmq/keyed.hpp).
#include <cstring>

#include "journal/files.hpp"
#include "journal/key_store.hpp"
#include "shm/channel_state.hpp"
#include "shm/durability.hpp"
#include "shmq/keyed.hpp"

namespace shmq {
namespace detail {
namespace {
void (*g_keyed_hook)(KeyedStage) = nullptr;
void keyed_hook(KeyedStage stage) {
  if (g_keyed_hook) g_keyed_hook(stage);
}
}  // namespace

void set_keyed_hook(void (*hook)(KeyedStage)) { g_keyed_hook = hook; }

struct KeyedState {
  Consumer consumer;
  journal::KeyStore store;
  std::uint64_t incarnation = 0;  // the channel's: inner ids are unique within one
  std::chrono::milliseconds flush_interval{5};
  std::uint64_t skipped = 0;
  std::string key;  // scratch: the store key of the message at hand

  // The store key of M: 'k' + its biz key, or 'i' + the channel's incarnation + its inner id when it
  // has none (the prefixes keep the two apart; the incarnation keeps a channel made again, whose
  // producer ids and sequences start over, from finding the old one's keys).
  const std::string& key_of(const Message& m) {
    key.clear();
    if (!m.key().empty()) {
      key.push_back('k');
      key.append(m.key());
    } else {
      const InnerId id = m.id();
      key.push_back('i');
      key.append(reinterpret_cast<const char*>(&incarnation), sizeof incarnation);
      key.append(reinterpret_cast<const char*>(&id.producer), sizeof id.producer);
      key.append(reinterpret_cast<const char*>(&id.seq), sizeof id.seq);
    }
    return key;
  }
};

namespace {
std::filesystem::path default_store(const Channel& ch, std::string_view group) {
  // A durable channel's journal directory (DIR/NAME); for a Memory channel, where its journal
  // would be.
  const ChannelState& st = ch.state();
  const std::filesystem::path dir = st.durable() ? st.journal_dir : journal_path_for(ch.name(), ch.options().journal_dir);
  // As the journal makes its directories: mode 0700, each parent fsync'd (the path to the keys
  // survives a power loss). Errors name the directory and the cause.
  journal::detail::create_directories(dir);
  return dir / ("keys." + std::string(group));
}
}  // namespace
}  // namespace detail

KeyedConsumer::KeyedConsumer(Channel& ch, std::string_view group, const KeyedConsumerOptions& o) {
  detail::check_slot_name(ch.name(), "group", group);
  journal::KeyStoreOptions so;
  so.max_keys = o.max_keys;
  so.sync = o.sync;
  so.flush_interval = o.flush_interval;
  so.mode = ch.options().mode;
  const std::filesystem::path path = o.store.empty() ? detail::default_store(ch, group) : o.store;
  journal::KeyStore store = journal::KeyStore::open(path, so);
  state_ = std::unique_ptr<detail::KeyedState>(new detail::KeyedState{Consumer(ch, group, o.consumer), std::move(store),
                                                                       ch.state().header->incarnation, o.flush_interval, 0, {}});
}

KeyedConsumer::KeyedConsumer(KeyedConsumer&&) noexcept = default;
KeyedConsumer& KeyedConsumer::operator=(KeyedConsumer&&) noexcept = default;
KeyedConsumer::~KeyedConsumer() = default;

std::optional<Message> KeyedConsumer::poll(std::chrono::nanoseconds timeout) {
  if (!state_) return std::nullopt;
  detail::KeyedState& s = *state_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::max(std::chrono::nanoseconds(0),
                         std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - std::chrono::steady_clock::now()));
    // Async: keys appended and not synced yet are synced within flush_interval, also while idle.
    const bool unsynced = s.store.sync_if_due();
    if (unsynced) left = std::min<std::chrono::nanoseconds>(left, s.flush_interval);
    std::optional<Message> m = s.consumer.poll(left);
    if (!m) {
      if (unsynced && s.consumer.status() == Status::Timeout && std::chrono::steady_clock::now() < deadline) continue;
      return m;
    }
    bool seen;
    try {
      seen = s.store.contains(s.key_of(*m));
    } catch (...) {
      s.consumer.nack(*m);  // not handled, not acked: delivered again
      throw;
    }
    if (!seen) return m;
    // Processed before (by this consumer or another of the group) and not acked: ack it now.
    s.consumer.ack(*m);
    ++s.skipped;
  }
}

Status KeyedConsumer::done(const Message& m) {
  if (!state_) return Status::Closed;
  detail::KeyedState& s = *state_;
  try {
    s.store.add(s.key_of(m));
  } catch (...) {
    s.consumer.nack(m);  // the key is not recorded: not acked, delivered again
    throw;
  }
  detail::keyed_hook(detail::KeyedStage::KeyRecorded);
  return s.consumer.ack(m);
}

Status KeyedConsumer::nack(const Message& m, std::chrono::nanoseconds delay) {
  return state_ ? state_->consumer.nack(m, delay) : Status::Closed;
}

Handled KeyedConsumer::process(const std::function<bool(const Message&)>& handler, std::chrono::nanoseconds timeout) {
  std::optional<Message> m = poll(timeout);
  if (!m) return Handled::Nothing;
  bool ok;
  try {
    ok = handler(*m);
  } catch (...) {
    nack(*m);
    throw;
  }
  if (!ok) {
    nack(*m);
    return Handled::Nacked;
  }
  detail::keyed_hook(detail::KeyedStage::HandlerDone);
  done(*m);  // if the key cannot be recorded, done() nacks and throws
  return Handled::Processed;
}

bool KeyedConsumer::processed(const Message& m) { return state_ && state_->store.contains(state_->key_of(m)); }
std::uint64_t KeyedConsumer::skipped() const noexcept { return state_ ? state_->skipped : 0; }
Consumer& KeyedConsumer::consumer() noexcept { return state_->consumer; }
const std::filesystem::path& KeyedConsumer::store_path() const noexcept { return state_->store.path(); }

}  // namespace shmq
