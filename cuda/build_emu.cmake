# Host emulation of the CUDA kernel: the _flashllm_emu nanobind module, always built with the host
# C++ compiler (no nvcc needed), so machines without a GPU still run the kernel's own source.
# Included by the top-level CMakeLists.txt, which has already found Python and nanobind.
set(FLASHLLM_EMU_DIR ${CMAKE_CURRENT_LIST_DIR}/emu)
set(FLASHLLM_EMU_SOURCES
  ${FLASHLLM_EMU_DIR}/bindings.cc
  ${FLASHLLM_EMU_DIR}/warp_probes.cc
  ${FLASHLLM_EMU_DIR}/global_probes.cc
  ${FLASHLLM_EMU_DIR}/ptx_emu.cc
  ${FLASHLLM_EMU_DIR}/emu_runtime.cc
  ${FLASHLLM_EMU_DIR}/emu_memory.cc
  ${FLASHLLM_EMU_DIR}/emu_global.cc
  ${FLASHLLM_EMU_DIR}/emu_fiber.cc
  ${FLASHLLM_EMU_DIR}/spmm_entry.cc)  # the kernel's emulated spmm entry point

nanobind_add_module(_flashllm_emu NB_STATIC ${FLASHLLM_EMU_SOURCES})
# FLASHLLM_EMU makes cuda/kernel/ptx.cuh pick the emulated wrappers; the kernel's headers are found
# as "kernel/...", "emu/..." (relative to cuda/) and "flashllm/..." (the format header).
target_compile_definitions(_flashllm_emu PRIVATE FLASHLLM_EMU)
target_include_directories(_flashllm_emu PRIVATE
  ${CMAKE_CURRENT_LIST_DIR} ${CMAKE_CURRENT_LIST_DIR}/include ${FLASHLLM_EMU_DIR})
target_compile_features(_flashllm_emu PRIVATE cxx_std_17)
# -O2 whatever the build type: the emulated kernel runs in every test, and -O3's extra unrolling
# buys little for code that switches fibers at every warp instruction.
target_compile_options(_flashllm_emu PRIVATE -O2)
find_package(Threads REQUIRED)
target_link_libraries(_flashllm_emu PRIVATE Threads::Threads)
install(TARGETS _flashllm_emu LIBRARY DESTINATION jax_flashllm)
