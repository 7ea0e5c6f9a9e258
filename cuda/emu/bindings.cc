// The _flashllm_emu module: the CUDA kernel's source run under host emulation. Exposes the emulator's
// configuration and counters, the single-warp probes of warp_probes.cc (for tests/test_emu_ptx.py)
// and the emulated `spmm` entry point of cuda/emu/spmm_entry.cc.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "emu.h"
#include "py_util.h"

namespace nb = nanobind;

namespace flashllm {
namespace emu {
void bind_warp_probes(nb::module_& m);
void bind_global_probes(nb::module_& m);
}  // namespace emu
void emu_bind_spmm(nb::module_& m);
}  // namespace flashllm

NB_MODULE(_flashllm_emu, m) {
  namespace emu = flashllm::emu;
  m.doc() = "Host emulation of jax_flashllm's CUDA kernel (fibers, warp collectives, PTX semantics).";
  m.def("reset_stats", &emu::reset_stats, "Zero the shared/global memory counters.");
  m.def("stats", [] { return emu::py::stats_dict(emu::stats()); },
        "Counters accumulated since reset_stats(): smem_wavefronts, smem_requests, "
        "smem_bank_conflicts, gmem_requests, gmem_sectors.");
  m.def("op_stats", [] { return emu::py::op_stats_dict(emu::op_stats()); },
        "The same counters per instruction (ldmatrix, sts_16/32/128, lds_32/128, ldg_128, ldg_32, "
        "cp.async): {op: {requests, wavefronts, bank_conflicts, sectors}} for the ops that ran.");
  m.def("set_num_workers", &emu::set_num_workers, nb::arg("n"),
        "Host threads that run blocks in parallel (results do not depend on it).");
  m.def("num_workers", &emu::num_workers);
  m.def("set_schedule", [](const std::string& name) { emu::set_schedule(emu::parse_schedule(name)); },
        nb::arg("name"),
        "Fiber order: 'alternate' (default: lockstep, warp order reversed every other barrier "
        "epoch), 'round_robin' (lockstep, thread order) or 'warp_greedy' (a warp runs until it "
        "blocks at a barrier). A race-free kernel gives the same result under each.");
  m.def("schedule", [] { return std::string(emu::schedule_name(emu::schedule())); });
  m.def("set_block_order",
        [](const std::string& name, uint64_t seed) {
          emu::set_block_order(emu::parse_block_order(name), seed);
        },
        nb::arg("name"), nb::arg("seed") = 0,
        "Order in which a launch runs its blocks: 'linear' (default), 'reverse', or 'shuffle' (a "
        "fixed permutation drawn from seed). Kernels whose blocks communicate must not depend on it.");
  m.def("set_race_check", &emu::set_race_check, nb::arg("on"),
        "Switch the shared-memory race detector (default on); for garbage inputs whose scatter "
        "stores collide by construction.");
  m.def("race_check", &emu::race_check);
  m.def("block_order", [] { return std::string(emu::block_order_name(emu::block_order())); });
  m.def("set_max_dynamic_smem", &emu::set_max_dynamic_smem, nb::arg("bytes"),
        "Largest dynamic shared memory a launch may request (default 101376, sm_86/89).");
  m.def("max_dynamic_smem", &emu::max_dynamic_smem);
  emu::bind_warp_probes(m);
  emu::bind_global_probes(m);
  flashllm::emu_bind_spmm(m);
}
