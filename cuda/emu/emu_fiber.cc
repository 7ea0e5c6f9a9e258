// Fiber stacks and context switches for the emulator (see emu_fiber.h).
#include "emu_fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <utility>

#if !defined(__x86_64__) || defined(FLASHLLM_EMU_UCONTEXT)
#include <ucontext.h>
#endif

namespace flashllm {
namespace emu {
namespace fiber {

Stack::Stack(size_t bytes) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  size_ = (bytes + page - 1) / page * page;
  mapped_ = size_ + page;
  base_ = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base_ == MAP_FAILED) {
    base_ = nullptr;
    throw std::bad_alloc();
  }
  mprotect(base_, page, PROT_NONE);  // the stack grows down into this page: a fault, not corruption
  top_ = static_cast<char*>(base_) + mapped_;
}

Stack::Stack(Stack&& o) noexcept { *this = std::move(o); }

Stack& Stack::operator=(Stack&& o) noexcept {
  std::swap(base_, o.base_);
  std::swap(mapped_, o.mapped_);
  std::swap(top_, o.top_);
  std::swap(size_, o.size_);
  return *this;
}

Stack::~Stack() {
  if (base_) munmap(base_, mapped_);
}

#if defined(__x86_64__) && !defined(FLASHLLM_EMU_UCONTEXT)

extern "C" void flashllm_emu_switch(void** save_sp, void* load_sp);
extern "C" void flashllm_emu_trampoline();

// System V x86-64: rbx, rbp, r12-r15 are callee-saved; the caller of flashllm_emu_switch saves
// everything else. The MXCSR / x87 control words are not switched: ldmxcsr and fldcw are slow,
// partly serializing instructions, and device code never changes rounding modes, so fibers share the host
// thread's modes. A new fiber's stack is laid out exactly as a suspended one, with
// flashllm_emu_trampoline as return address: it calls r13(r12).
asm(R"(
  .text
  .globl flashllm_emu_switch
  .hidden flashllm_emu_switch
  .type flashllm_emu_switch, @function
flashllm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size flashllm_emu_switch, .-flashllm_emu_switch

  .globl flashllm_emu_trampoline
  .hidden flashllm_emu_trampoline
  .type flashllm_emu_trampoline, @function
flashllm_emu_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size flashllm_emu_trampoline, .-flashllm_emu_trampoline
)");

Context::~Context() {}

void make(Context& ctx, const Stack& stack, void (*entry)(void*), void* arg) {
  // After the switch pops 6*8 bytes and `ret` pops the trampoline address, rsp must be 16-byte
  // aligned so that the trampoline's call gives entry() the ABI's entry alignment (rsp % 16 == 8).
  uintptr_t top = reinterpret_cast<uintptr_t>(stack.top()) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top - 16);  // rsp after ret (aligned), 16 bytes spare
  *--slot = reinterpret_cast<uint64_t>(&flashllm_emu_trampoline);
  *--slot = 0;                                   // rbp
  *--slot = 0;                                   // rbx
  *--slot = reinterpret_cast<uint64_t>(arg);     // r12
  *--slot = reinterpret_cast<uint64_t>(entry);   // r13
  *--slot = 0;                                   // r14
  *--slot = 0;                                   // r15
  ctx.sp = slot;
}

void jump(Context& from, Context& to) { flashllm_emu_switch(&from.sp, to.sp); }

#else  // portable fallback

namespace {
void uc_entry(unsigned hi, unsigned lo, unsigned ehi, unsigned elo) {
  auto arg = reinterpret_cast<void*>((uintptr_t(hi) << 32) | lo);
  auto entry = reinterpret_cast<void (*)(void*)>((uintptr_t(ehi) << 32) | elo);
  entry(arg);
  std::abort();
}
ucontext_t* uc_of(Context& c) {
  if (!c.uc) c.uc = new ucontext_t();
  return static_cast<ucontext_t*>(c.uc);
}
}  // namespace

Context::~Context() { delete static_cast<ucontext_t*>(uc); }

void make(Context& ctx, const Stack& stack, void (*entry)(void*), void* arg) {
  ucontext_t* uc = uc_of(ctx);
  getcontext(uc);
  uc->uc_stack.ss_sp = static_cast<char*>(stack.top()) - stack.size();
  uc->uc_stack.ss_size = stack.size();
  uc->uc_link = nullptr;
  const auto a = reinterpret_cast<uintptr_t>(arg);
  const auto e = reinterpret_cast<uintptr_t>(entry);
  makecontext(uc, reinterpret_cast<void (*)()>(&uc_entry), 4, unsigned(a >> 32), unsigned(a),
              unsigned(e >> 32), unsigned(e));
}

void jump(Context& from, Context& to) { swapcontext(uc_of(from), uc_of(to)); }

#endif

}  // namespace fiber
}  // namespace emu
}  // namespace flashllm
