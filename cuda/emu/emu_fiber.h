// Minimal fibers for the emulator: a stack and a saved stack pointer, switched by a few
// instructions of assembly on x86-64 (callee-saved registers only) and by ucontext elsewhere, or when
// FLASHLLM_EMU_UCONTEXT is defined (which also saves the signal mask with a system call: correct,
// but measured 12x slower per warp instruction). A switch happens at every lane's arrival at a warp
// collective, i.e. 32 per warp instruction, so its cost dominates the emulator's overhead.
#pragma once

#include <cstddef>

namespace flashllm {
namespace emu {
namespace fiber {

// A stack of `bytes` usable bytes with an inaccessible guard page below it (an overflowing fiber
// faults instead of silently corrupting a neighbour).
class Stack {
 public:
  Stack() = default;
  explicit Stack(size_t bytes);
  Stack(Stack&& o) noexcept;
  Stack& operator=(Stack&& o) noexcept;
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  ~Stack();
  void* top() const { return top_; }
  size_t size() const { return size_; }

 private:
  void* base_ = nullptr;  // mapping start (guard page)
  size_t mapped_ = 0;
  void* top_ = nullptr;
  size_t size_ = 0;
};

// Saved execution state. `Context` for the host thread itself needs no stack.
struct Context {
  void* sp = nullptr;  // x86-64: saved stack pointer
  void* uc = nullptr;  // other architectures: a ucontext_t (owned)
  Context() = default;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context();
};

// Prepares `ctx` so that switching to it runs entry(arg) on `stack`. entry must never return
// (it switches away for the last time instead).
void make(Context& ctx, const Stack& stack, void (*entry)(void*), void* arg);

// Saves the current state into `from` and resumes `to`.
void jump(Context& from, Context& to);

}  // namespace fiber
}  // namespace emu
}  // namespace flashllm
