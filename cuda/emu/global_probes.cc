// Probe kernels for the emulator's inter-block memory model (emu.h, detail::global_store), used by
// tests/test_emulated_safety.py: the release / acquire handshake the fused split-K reduction relies
// on, with and without its release fence, so the tests can show that a forgotten fence is caught.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <vector>

#include "emu.h"
#include "ptx_emu.h"

namespace flashllm {
namespace emu {
namespace {

namespace nb = nanobind;

struct HandshakeArgs {
  float* data;        // one slot per block, initially -1
  uint32_t* counter;  // arrivals, initially 0
  float* seen;        // per block: the sum of all slots as the last block read them, else -2
  bool fence;
};

// Every block stores (blockIdx.x + 1) into its slot, optionally fences, and counts its arrival; the
// last block to arrive sums every slot. With the fence the sum is always n (n + 1) / 2.
__global__ void handshake_kernel(HandshakeArgs a) {
  if (threadIdx.x != 0) return;
  ptx::stg_f32(a.data + blockIdx.x, float(blockIdx.x + 1));
  if (a.fence) ptx::fence_acq_rel_gpu();
  const uint32_t arrived = ptx::atom_add_relaxed_gpu(a.counter, 1u) + 1u;
  float sum = -2.f;
  if (arrived == gridDim.x) {
    ptx::fence_acq_rel_gpu();  // acquire (only the last block needs it)
    sum = 0.f;
    for (unsigned b = 0; b < gridDim.x; ++b) sum += ptx::ldcg_f32(a.data + b);
  }
  a.seen[blockIdx.x] = sum;
}

std::vector<float> handshake(int blocks, bool fence) {
  std::vector<float> data(size_t(blocks), -1.f), seen(size_t(blocks), -3.f);
  uint32_t counter = 0;
  GlobalRanges ranges;
  ranges.add(data.data(), data.size() * 4);
  ranges.add(&counter, 4);
  launch(&handshake_kernel, dim3(unsigned(blocks)), dim3(32), 0,
         HandshakeArgs{data.data(), &counter, seen.data(), fence});
  return seen;
}

}  // namespace

void bind_global_probes(nb::module_& m) {
  m.def("global_handshake", &handshake, nb::arg("blocks"), nb::arg("fence"),
        "Each block publishes a value and counts its arrival; the last one sums all values. "
        "Returns per block the sum it read (last block) or -2. fence=False drops the release fence.");
}

}  // namespace emu
}  // namespace flashllm
