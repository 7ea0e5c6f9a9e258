// Harness plumbing: device buffers, CUDA-event timing over rotating buffers, and the JSON report.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace flashllm {
namespace harness {

// Device allocations freed together; the first failure is remembered (ok() / error()).
class DeviceBuffers {
 public:
  DeviceBuffers() = default;
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;
  ~DeviceBuffers() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <class T>
  T* alloc(size_t count, int fill_byte) {
    if (count == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, count * sizeof(T));
    if (e != cudaSuccess) {
      if (error_.empty()) error_ = std::string("cudaMalloc: ") + cudaGetErrorString(e);
      return nullptr;
    }
    ptrs_.push_back(p);
    cudaMemset(p, fill_byte, count * sizeof(T));
    return static_cast<T*>(p);
  }
  template <class T>
  const T* upload(const std::vector<T>& host) {
    T* p = alloc<T>(host.size(), 0);
    if (p) cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    return p;
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

 private:
  std::vector<void*> ptrs_;
  std::string error_;
};

class Timing {
 public:
  bool init(std::string& err) {
    cudaDeviceProp prop{};
    cudaError_t e = cudaGetDeviceProperties(&prop, 0);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      err = cudaGetErrorString(e);
      return false;
    }
    l2_bytes_ = prop.l2CacheSize;
    name_ = prop.name;
    sms_ = prop.multiProcessorCount;
    cc_ = prop.major * 10 + prop.minor;
    return true;
  }
  cudaStream_t stream() const { return stream_; }
  const std::string& name() const { return name_; }
  int sms() const { return sms_; }
  int cc() const { return cc_; }
  int64_t l2_bytes() const { return l2_bytes_; }
  double copy_gbs() const { return copy_gbs_; }
  const std::string& error() const { return error_; }
  bool fatal() const { return fatal_; }

  // Buffer sets to rotate through so that consecutive launches never find their operands in L2:
  // together at least 3x the L2, at most 16 sets and 24 GB.
  int rotation(int64_t set_bytes) const {
    const int64_t want = (3 * l2_bytes_ + set_bytes - 1) / std::max<int64_t>(set_bytes, 1);
    const int64_t cap = std::max<int64_t>(1, (int64_t(24) << 30) / std::max<int64_t>(set_bytes, 1));
    return int(std::max<int64_t>(1, std::min<int64_t>({want, 16, cap})));
  }

  // Median time of one launch (us): a CUDA event pair around every launch, launches back to back on
  // one stream, 3 warm-up launches, then batches of 5 timed ones until `seconds` of wall time or
  // 400 launches. -1 on a CUDA error (error(), fatal()).
  double median_us(double seconds, const std::function<void(int)>& launch) {
    std::vector<cudaEvent_t> ev(6);
    for (auto& e : ev) cudaEventCreate(&e);
    int it = 0;
    for (; it < 3; ++it) launch(it);
    cudaError_t e = cudaStreamSynchronize(stream_);
    std::vector<double> times;
    const auto start = std::chrono::steady_clock::now();
    while (e == cudaSuccess && times.size() < 400) {
      // A batch of 5 launches, an event before each and one after the last; the pairs are read
      // right after the batch, before the events are recorded again.
      const int batch = 5;
      for (int i = 0; i < batch; ++i, ++it) {
        cudaEventRecord(ev[size_t(i)], stream_);
        launch(it);
      }
      cudaEventRecord(ev[size_t(batch)], stream_);
      e = cudaStreamSynchronize(stream_);
      for (int i = 0; e == cudaSuccess && i < batch; ++i) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, ev[size_t(i)], ev[size_t(i + 1)]) == cudaSuccess) times.push_back(ms * 1e3);
      }
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (el > seconds) break;
    }
    for (auto& x : ev) cudaEventDestroy(x);
    if (e != cudaSuccess) {
      error_ = cudaGetErrorString(e);
      fatal_ = cudaDeviceSynchronize() != cudaSuccess;
      return -1;
    }
    if (times.empty()) return -1;
    std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
    return times[times.size() / 2];
  }

  // Device-to-device copy bandwidth (read + write bytes per second, GB/s) of a buffer far larger
  // than L2: the practical ceiling the SpMM's GB/s is reported against.
  void measure_copy() {
    const size_t bytes = size_t(1) << 30;
    void *a = nullptr, *b = nullptr;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
      cudaFree(a);
      return;
    }
    const double us = median_us(1.0, [&](int) { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream_); });
    if (us > 0) copy_gbs_ = 2.0 * double(bytes) / us * 1e-3;
    cudaFree(a);
    cudaFree(b);
  }

 private:
  cudaStream_t stream_ = nullptr;
  int64_t l2_bytes_ = 0;
  std::string name_, error_;
  int sms_ = 0, cc_ = 0;
  double copy_gbs_ = 0;
  bool fatal_ = false;
};

// One JSON object, built field by field (names and strings are plain ASCII here).
class Json {
 public:
  Json& str(const char* k, const std::string& v) {
    std::string esc;
    for (char ch : v) {
      if (ch == '"' || ch == '\\') esc += '\\';
      esc += (ch == '\n' || ch == '\t') ? ' ' : ch;
    }
    return raw(k, "\"" + esc + "\"");
  }
  Json& num(const char* k, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, std::isfinite(v) ? "%.6g" : "null", v);
    return raw(k, buf);
  }
  Json& num(const char* k, int64_t v) { return raw(k, std::to_string(v)); }
  Json& num(const char* k, int v) { return raw(k, std::to_string(v)); }
  Json& boolean(const char* k, bool v) { return raw(k, v ? "true" : "false"); }
  Json& raw(const char* k, const std::string& v) {
    body_ += (body_.empty() ? "" : ", ") + std::string("\"") + k + "\": " + v;
    return *this;
  }
  std::string text() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

// The report file: a header object and the cases so far, rewritten (to a temporary, then renamed)
// after every case.
class Report {
 public:
  void open(const std::string& path) { path_ = path; }
  Json& header() { return header_; }
  void add(const Json& c) {
    cases_.push_back(c.text());
    flush();
  }
  void flush() const {
    if (path_.empty()) return;
    const std::string tmp = path_ + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) return;
    std::string h = header_.text();
    h.pop_back();
    std::fprintf(f, "%s, \"cases\": [\n", h.c_str());
    for (size_t i = 0; i < cases_.size(); ++i)
      std::fprintf(f, "  %s%s\n", cases_[i].c_str(), i + 1 < cases_.size() ? "," : "");
    std::fprintf(f, "]}\n");
    std::fclose(f);
    std::rename(tmp.c_str(), path_.c_str());
  }

 private:
  std::string path_;
  Json header_;
  std::vector<std::string> cases_;
};

}  // namespace harness
}  // namespace flashllm
