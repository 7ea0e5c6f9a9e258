// cuBLAS loaded at run time (dlopen), so the harness binary runs where cuBLAS is absent (the dense
// peer is then reported as skipped) and needs no particular cuBLAS version at link time. Searched:
// $FLASHLLM_CUBLAS (a file), then libcublas.so.13 / .12 / .so on the loader path (run.sh adds the
// nvidia-cublas wheel's and torch's lib folders to LD_LIBRARY_PATH).
#pragma once

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdlib>
#include <string>

namespace flashllm {
namespace harness {

// The few cuBLAS ABI values used (cublas_api.h / library_types.h; stable since CUDA 11).
constexpr int kCublasOpN = 0, kCublasOpT = 1;
constexpr int kCudaR16F = 2, kCudaR16BF = 14, kCudaR32F = 0;
constexpr int kCublasCompute32F = 68;
constexpr int kCublasGemmDefault = -1;

class Cublas {
 public:
  // Returns "" when loaded, else why not (the caller reports cuBLAS as skipped).
  std::string load() {
    const char* env = std::getenv("FLASHLLM_CUBLAS");
    const char* names[] = {env, "libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    std::string tried;
    for (const char* name : names) {
      if (!name || !*name) continue;
      lib_ = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib_) {
        path_ = name;
        break;
      }
      tried += std::string(tried.empty() ? "" : "; ") + dlerror();
    }
    if (!lib_) return "cuBLAS not found (" + tried + ")";
    create_ = reinterpret_cast<Create>(dlsym(lib_, "cublasCreate_v2"));
    destroy_ = reinterpret_cast<Destroy>(dlsym(lib_, "cublasDestroy_v2"));
    set_stream_ = reinterpret_cast<SetStream>(dlsym(lib_, "cublasSetStream_v2"));
    gemm_ = reinterpret_cast<GemmEx>(dlsym(lib_, "cublasGemmEx"));
    if (!create_ || !destroy_ || !set_stream_ || !gemm_) return "cuBLAS symbols missing in " + path_;
    if (int st = create_(&handle_); st != 0) return "cublasCreate failed (status " + std::to_string(st) + ")";
    return {};
  }
  ~Cublas() {
    if (handle_) destroy_(handle_);
  }
  const std::string& path() const { return path_; }

  // Row-major y (n, m) = x (n, k) @ w (m, k)^T in 16-bit (bf16 or fp16), fp32 accumulation: in
  // cuBLAS's column-major terms y^T (m x n) = op_T(w^T (k x m)) * x^T (k x n).
  int gemm(cudaStream_t s, bool bf16, int m, int n, int k, const void* w, const void* x, void* y) {
    set_stream_(handle_, s);
    const float one = 1.f, zero = 0.f;
    const int t = bf16 ? kCudaR16BF : kCudaR16F;
    return gemm_(handle_, kCublasOpT, kCublasOpN, m, n, k, &one, w, t, k, x, t, k, &zero, y, t, m,
                 kCublasCompute32F, kCublasGemmDefault);
  }

 private:
  using Handle = void*;
  using Create = int (*)(Handle*);
  using Destroy = int (*)(Handle);
  using SetStream = int (*)(Handle, cudaStream_t);
  using GemmEx = int (*)(Handle, int, int, int, int, int, const void*, const void*, int, int,
                         const void*, int, int, const void*, void*, int, int, int, int);
  void* lib_ = nullptr;
  std::string path_;
  Handle handle_ = nullptr;
  Create create_ = nullptr;
  Destroy destroy_ = nullptr;
  SetStream set_stream_ = nullptr;
  GemmEx gemm_ = nullptr;
};

}  // namespace harness
}  // namespace flashllm
