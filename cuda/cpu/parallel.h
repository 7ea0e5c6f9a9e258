// Work sharing for the CPU kernel over a caller-provided scheduler (XLA's intra-op thread pool in the
// FFI handler), without ever blocking on a task that has not started: the calling thread claims work
// too, and only waits for helpers that actually claimed an item. That makes it deadlock-free even when
// the pool's threads are all busy (e.g. the handler itself runs on one of them).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

namespace flashllm::cpu {

// Runs `task` on some other thread, or inline if no pool is available.
using Scheduler = std::function<void(std::function<void()>)>;

inline void parallel_for(int64_t num_items, int64_t num_workers, const Scheduler& schedule,
                         const std::function<void(int64_t)>& body) {
  if (num_items <= 0) return;
  if (num_workers <= 1 || num_items == 1 || !schedule) {
    for (int64_t i = 0; i < num_items; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> active{0};
    std::mutex mu;
    std::condition_variable cv;
    int64_t num_items;
    const std::function<void(int64_t)>* body;
  };
  auto state = std::make_shared<State>();
  state->num_items = num_items;
  state->body = &body;
  // `body` lives on the caller's stack: a helper touches it only while `active` counts it, and the
  // caller waits for active == 0 before returning. Late helpers see no work and exit.
  auto work = [](State& s) {
    s.active.fetch_add(1);
    for (int64_t i; (i = s.next.fetch_add(1)) < s.num_items;) (*s.body)(i);
    if (s.active.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(s.mu);
      s.cv.notify_all();
    }
  };
  const int64_t helpers = std::min(num_workers, num_items) - 1;
  for (int64_t h = 0; h < helpers; ++h) schedule([state, work] { work(*state); });
  work(*state);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->active.load() == 0; });
}

}  // namespace flashllm::cpu
