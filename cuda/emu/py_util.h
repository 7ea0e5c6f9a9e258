// Small nanobind helpers shared by the emulator's Python bindings (bindings.cc, warp_probes.cc and
// the kernel engineer's spmm_entry.cc): numpy results that own their buffer, Stats as a dict.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <initializer_list>
#include <utility>
#include <vector>

#include "emu.h"

namespace flashllm {
namespace emu {
namespace py {

namespace nb = nanobind;

// A numpy array of `shape` that takes ownership of `data` (its size must equal the shape's product).
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& data, std::initializer_list<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(data));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape, owner);
}

// {"smem_wavefronts": ..., "smem_requests": ..., ...}
inline nb::dict stats_dict(const Stats& s) {
  nb::dict d;
  for (const auto& [name, value] : stats_fields(s)) d[name] = value;
  return d;
}

// {"ldmatrix": {"requests": ..., "wavefronts": ..., "bank_conflicts": ..., "sectors": ...}, ...}
// for the instructions that ran.
inline nb::dict op_stats_dict(const std::vector<OpStats>& ops) {
  nb::dict d;
  for (const auto& o : ops) {
    if (o.requests == 0) continue;
    nb::dict e;
    e["requests"] = o.requests;
    e["wavefronts"] = o.wavefronts;
    e["bank_conflicts"] = o.bank_conflicts;
    e["sectors"] = o.sectors;
    d[o.op] = e;
  }
  return d;
}

}  // namespace py
}  // namespace emu
}  // namespace flashllm
