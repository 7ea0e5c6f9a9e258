# CUDA Tensor Core SpMM kernel + XLA FFI handler -> jax_flashllm/_flashllm_cuda.
# Included by the top-level CMakeLists.txt; builds nothing (and fails nothing) without nvcc.
#
# Architectures: SASS for sm_80/86/89/90 plus compute_90 PTX for newer GPUs, unless the user sets
# CMAKE_CUDA_ARCHITECTURES (e.g. CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=90-real for a quick
# development build) or the CUDAARCHS environment variable. Never "native": CI has no GPU.
# Build time: every (tiling config, dtype) instantiation is its own small .cu under
# cuda/kernel/inst/, so the 8 x 5 device compilations spread over the available cores.

# -DFLASHLLM_CUDA=OFF skips the CUDA kernel even where nvcc exists (quick CPU-only development builds).
option(FLASHLLM_CUDA "Build the CUDA kernel when nvcc is found" ON)
if(NOT FLASHLLM_CUDA)
  message(STATUS "FLASHLLM_CUDA=OFF: building without the CUDA kernel (_flashllm_cuda)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "nvcc not found: building without the CUDA kernel (_flashllm_cuda)")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "80-real;86-real;89-real;90-real;90-virtual"
      CACHE STRING "CUDA architectures for the flashllm kernel")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
message(STATUS "flashllm CUDA kernel: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
               "architectures ${CMAKE_CUDA_ARCHITECTURES}")

set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

file(GLOB FLASHLLM_CUDA_INSTANCES CONFIGURE_DEPENDS
     ${CMAKE_CURRENT_SOURCE_DIR}/cuda/kernel/inst/*.cu)

# Device code and the FFI handler in a static library (compiled by nvcc); the nanobind module
# itself is plain C++, so nanobind's compiler flags never reach nvcc.
add_library(flashllm_cuda_kernels STATIC
  cuda/ffi/cuda_handler.cu
  cuda/kernel/launcher.cu
  ${FLASHLLM_CUDA_INSTANCES})
target_include_directories(flashllm_cuda_kernels PRIVATE
  ${FLASHLLM_INCLUDE_DIR} ${XLA_FFI_INCLUDE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/cuda)
set_target_properties(flashllm_cuda_kernels PROPERTIES
  POSITION_INDEPENDENT_CODE ON
  CUDA_VISIBILITY_PRESET hidden
  CXX_VISIBILITY_PRESET hidden)
target_compile_options(flashllm_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
# The XLA FFI headers trip two harmless EDG front-end warnings under nvcc (missing return after an
# exhaustive switch; always_inline on a non-inline function) and the host compiler the first one
# again; keep the build log readable.
set_source_files_properties(cuda/ffi/cuda_handler.cu PROPERTIES
  COMPILE_OPTIONS "--diag-suppress=940,2473;-Xcompiler=-Wno-return-type")
target_link_libraries(flashllm_cuda_kernels PUBLIC CUDA::cudart_static)

nanobind_add_module(_flashllm_cuda NB_STATIC cuda/ffi/bindings_cuda.cc)
target_include_directories(_flashllm_cuda PRIVATE
  ${FLASHLLM_INCLUDE_DIR} ${XLA_FFI_INCLUDE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/cuda)
target_link_libraries(_flashllm_cuda PRIVATE flashllm_cuda_kernels)
install(TARGETS _flashllm_cuda LIBRARY DESTINATION jax_flashllm)
