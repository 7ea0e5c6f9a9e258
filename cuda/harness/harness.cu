// The GPU bundle's standalone harness (make gpu-bundle; run by run.sh): the SpMM kernel through its
// launcher, with no JAX and no Python. Reads cases.txt (one case a line):
//   golden <name> <file>                                   correctness against a golden file
//   speed <name> <format> <dtype> <m> <k> <n> <sparsity> <split_k>
// and writes a JSON report, rewritten after every case so a run cut short still reports.
//   harness --list [--cases F]                     print the cases (no GPU needed)
//   harness --verify-golden [--cases F]            parse every golden file and hold the emulator's
//                                                  own result to the bound (no GPU needed)
//   harness [--cases F] [--out R.json] [--filter S1,S2] [--budget SEC] [--case-seconds SEC]
// Exit status: 0 all correctness cases passed, 1 some failed, 2 the device failed (a sticky error
// ends the run: the context is unusable after it).
#include <cuda_runtime.h>
#include <sys/random.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cublas_dl.h"
#include "formats.cuh"
#include "golden.h"
#include "timing.h"

// The static libstdc++ of this build machine (GCC 12) references arc4random (glibc 2.36) from
// std::random_device, which the harness never uses; defining it here keeps the binary's glibc
// requirement at 2.35 (Ubuntu 22.04), the likely GPU machine's. getrandom is glibc 2.25.
extern "C" uint32_t arc4random(void) noexcept {
  uint32_t v = 0;
  if (getrandom(&v, sizeof v, 0) != sizeof v) v = uint32_t(std::chrono::steady_clock::now().time_since_epoch().count());
  return v;
}

namespace flashllm {
namespace harness {
namespace {

struct Case {
  std::string kind, name, file;  // file: golden only
  int format = kFormatTiledCsl, m = 0, k = 0, n = 0, split_k = 1;
  bool bf16 = true;
  double sparsity = 0;
};

std::vector<Case> read_cases(const std::string& path, std::string& err) {
  std::vector<Case> out;
  std::ifstream in(path);
  if (!in) err = "cannot read " + path;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    Case c;
    std::string dtype;
    ss >> c.kind >> c.name;
    if (c.kind == "golden") {
      ss >> c.file;
    } else if (c.kind == "speed") {
      ss >> c.format >> dtype >> c.m >> c.k >> c.n >> c.sparsity >> c.split_k;
      c.bf16 = dtype == "bfloat16";
    }
    if (!ss || (c.kind != "golden" && c.kind != "speed")) {
      err = "bad line in " + path + ": " + line;
      break;
    }
    out.push_back(c);
  }
  return out;
}

std::string dir_of(const std::string& path) {
  const size_t s = path.rfind('/');
  return s == std::string::npos ? "." : path.substr(0, s);
}

// A CUDA error that leaves the context unusable: nothing after it can be trusted.
bool sticky(cudaError_t e) {
  return e == cudaErrorIllegalAddress || e == cudaErrorMisalignedAddress ||
         e == cudaErrorLaunchFailure || e == cudaErrorIllegalInstruction ||
         e == cudaErrorHardwareStackError || e == cudaErrorInvalidAddressSpace ||
         e == cudaErrorInvalidPc || e == cudaErrorAssert || e == cudaErrorUnknown;
}

struct Run {
  Report report;
  Timing timing;
  Cublas cublas;
  std::string cublas_skip;
  std::map<std::string, double> cublas_us;  // by (m, k, n, dtype)
  bool failed = false, fatal = false;
};

// ---- correctness ------------------------------------------------------------------------------
void run_golden(Run& r, const Case& c, const std::string& dir, Json& j) {
  Golden g;
  if (std::string e = read_golden(dir + "/" + c.file, g); !e.empty()) {
    j.str("error", e);
    r.failed = true;
    return;
  }
  j.num("format", g.format).num("m", g.m).num("k", g.k).num("n", g.n).num("split_k", g.split_k);
  j.str("dtype", g.dtype == 1 ? "bfloat16" : "float16").num("config", g.config);
  j.boolean("malformed_input", g.flags & 1);
  DeviceBuffers b;
  DeviceMatrix w;
  w.format = g.format, w.m = g.m, w.k = g.k;
  w.value_count = int64_t(g.values.size());
  w.index_bytes = int64_t(g.index.size());
  w.values = b.upload(g.values);
  w.index = b.upload(g.index);
  w.tile_offsets = b.upload(g.tile_offsets);
  const uint16_t* x = b.upload(g.x);
  const size_t nm = size_t(g.n) * size_t(g.m);
  auto* y = b.alloc<uint16_t>(nm, 0xff);  // NaN bits: an output never written fails
  const int64_t ws = splitk_workspace_words(g.split_k, g.n, (g.m + kTileM - 1) / kTileM);
  auto* workspace = b.alloc<float>(size_t(ws), 0xff);  // NaN partials, garbage counters
  std::vector<uint16_t> first, second(nm);
  for (int rep = 0; rep < 2; ++rep) {
    std::string err = launch_matrix(w, x, g.n, y, workspace, g.split_k, g.dtype == 1, g.config, nullptr);
    const cudaError_t e = cudaDeviceSynchronize();
    if (err.empty() && e != cudaSuccess) err = std::string("kernel: ") + cudaGetErrorString(e);
    if (!err.empty()) {
      j.str("error", err);
      r.failed = true;
      r.fatal = sticky(e);
      return;
    }
    std::vector<uint16_t>& dst = rep == 0 ? first : second;
    dst.resize(nm);
    cudaMemcpy(dst.data(), y, nm * 2, cudaMemcpyDeviceToHost);
  }
  const Comparison cmp = compare(g, first);
  j.boolean("pass", cmp.pass()).num("outside_bound", cmp.outside).num("nan_mismatch", cmp.nan_mismatch);
  j.num("zero_mismatch", cmp.zero_mismatch).num("worst_error_over_bound", cmp.worst_ratio);
  j.num("first_bad_output", cmp.first_bad).num("outputs", int64_t(nm));
  j.num("bitwise_equal_to_emulator", cmp.bitwise_equal_to_emu);
  j.boolean("repeat_bitwise_identical", first == second);
  if (!cmp.pass() || first != second) r.failed = true;
}

// ---- speed ------------------------------------------------------------------------------------
// cuBLAS dense GEMM of the case's shape (16-bit in and out, fp32 accumulation), over rotating
// weight buffers like the SpMM. -1 on failure.
double dense_us(Run& r, const Case& c, double seconds) {
  const int64_t w_bytes = int64_t(c.m) * c.k * 2;
  const int rot = r.timing.rotation(w_bytes);
  DeviceBuffers b;
  std::vector<uint16_t*> ws;
  for (int s = 0; s < rot; ++s) {
    ws.push_back(b.alloc<uint16_t>(size_t(c.m) * c.k, 0));
    if (ws.back()) fill_random<<<grid_for(int64_t(c.m) * c.k), 256>>>(ws.back(), int64_t(c.m) * c.k, 99u + s, c.bf16);
  }
  auto* x = b.alloc<uint16_t>(size_t(c.n) * c.k, 0);
  auto* y = b.alloc<uint16_t>(size_t(c.n) * c.m, 0);
  if (!b.ok() || cudaDeviceSynchronize() != cudaSuccess) return -1;  // generators done (legacy stream)
  int status = 0;
  const double us = r.timing.median_us(seconds, [&](int it) {
    const int st = r.cublas.gemm(r.timing.stream(), c.bf16, c.m, c.n, c.k, ws[size_t(it % rot)], x, y);
    if (st != 0) status = st;
  });
  return status == 0 ? us : -1;
}

void run_speed(Run& r, const Case& c, double case_seconds, Json& j) {
  j.num("format", c.format).str("dtype", c.bf16 ? "bfloat16" : "float16");
  j.num("m", c.m).num("k", c.k).num("n", c.n).num("sparsity", c.sparsity).num("split_k", c.split_k);
  const int m_tiles = (c.m + kTileM - 1) / kTileM, k_tiles = (c.k + kTileK - 1) / kTileK;
  const int64_t tiles = int64_t(m_tiles) * k_tiles;
  // Values per tile and index bytes by format: Tiled-CSL (value + location per entry), bitmap (the
  // same count of bits in every block, 1040 index bytes per tile), dense (every element, no index).
  const int bits = bitmap_bits_per_block(c.sparsity);
  const int per_tile = c.format == kFormatBitmap ? kBlocksPerTile * bits
                       : c.format == kFormatDense ? kTileElems
                                                  : entries_per_tile(c.sparsity);
  const int64_t entries = tiles * per_tile;
  if (entries > (int64_t(1) << 31) - kTileElems) {
    j.str("error", "too many entries for int32 offsets");
    r.failed = true;
    return;
  }
  const int64_t index_bytes = c.format == kFormatBitmap ? tiles * kBitmapWordsPerTile * 4
                              : c.format == kFormatDense ? 0
                                                         : entries * 2;
  const int64_t set_bytes = entries * 2 + index_bytes;
  const int rot = r.timing.rotation(set_bytes);
  DeviceBuffers b;
  std::vector<int32_t> offsets(static_cast<size_t>(tiles + 1));
  for (int64_t t = 0; t <= tiles; ++t) offsets[size_t(t)] = int32_t(t * per_tile);
  const int32_t* d_offsets = b.upload(offsets);
  std::vector<DeviceMatrix> sets(static_cast<size_t>(rot));
  for (int s = 0; s < rot; ++s) {
    auto* values = b.alloc<uint16_t>(size_t(entries), 0);
    void* index = nullptr;
    if (c.format == kFormatBitmap) {
      auto* words = b.alloc<uint32_t>(size_t(index_bytes / 4), 0);
      fill_random<<<grid_for(entries), 256>>>(values, entries, 1234u + s, c.bf16);
      fill_bitmap_index<<<grid_for(index_bytes / 4), 256>>>(words, tiles, bits, 4321u + s);
      index = words;
    } else if (c.format == kFormatDense) {
      fill_random<<<grid_for(entries), 256>>>(values, entries, 1234u + s, c.bf16);
    } else {
      auto* locs = b.alloc<uint16_t>(size_t(entries), 0);
      fill_tiled_csl<<<grid_for(entries), 256>>>(values, locs, tiles, per_tile, 1234u + s, c.bf16);
      index = locs;
    }
    DeviceMatrix& w = sets[size_t(s)];
    w.format = c.format, w.m = c.m, w.k = c.k, w.value_count = entries, w.index_bytes = index_bytes;
    w.values = values, w.index = index, w.tile_offsets = d_offsets;
  }
  auto* x = b.alloc<uint16_t>(size_t(c.n) * c.k, 0);
  fill_random<<<grid_for(int64_t(c.n) * c.k), 256>>>(x, int64_t(c.n) * c.k, 77u, c.bf16);
  auto* y = b.alloc<uint16_t>(size_t(c.n) * c.m, 0);
  const int64_t ws = splitk_workspace_words(c.split_k, c.n, m_tiles);
  auto* workspace = b.alloc<float>(size_t(ws), 0);
  // The generators ran on the legacy stream, the timing runs on a non-blocking one: finish them.
  const cudaError_t gen = cudaDeviceSynchronize();
  if (!b.ok() || gen != cudaSuccess) {
    j.str("error", b.ok() ? std::string("generating the matrix: ") + cudaGetErrorString(gen) : b.error());
    r.failed = true;
    r.fatal = sticky(gen);
    return;
  }
  std::string launch_err;
  const double us = r.timing.median_us(case_seconds, [&](int it) {
    const std::string e = launch_matrix(sets[size_t(it % rot)], x, c.n, y, workspace, c.split_k,
                                        c.bf16, -1, r.timing.stream());
    if (!e.empty()) launch_err = e;
  });
  if (!launch_err.empty() || us < 0) {
    j.str("error", launch_err.empty() ? r.timing.error() : launch_err);
    r.fatal = r.timing.fatal();
    r.failed = true;
    return;
  }
  const double bytes = double(set_bytes) + offsets.size() * 4.0 + 2.0 * c.n * (double(c.k) + c.m);
  j.num("us", us).num("bytes_moved", bytes).num("gbs", bytes / us * 1e-3).num("rotation", rot);
  if (r.timing.copy_gbs() > 0) j.num("fraction_of_copy_bandwidth", bytes / us * 1e-3 / r.timing.copy_gbs());
  // Dense peer: cuBLAS bf16/fp16 GEMM of the same shape, once per (m, k, n, dtype).
  if (!r.cublas_skip.empty()) {
    j.str("cublas", "skipped: " + r.cublas_skip);
    return;
  }
  const std::string key = std::to_string(c.m) + "x" + std::to_string(c.k) + "x" + std::to_string(c.n) + (c.bf16 ? "b" : "h");
  if (!r.cublas_us.count(key)) r.cublas_us[key] = dense_us(r, c, case_seconds);
  const double dus = r.cublas_us[key];
  if (dus > 0) j.num("cublas_us", dus).num("speedup_vs_cublas", dus / us);
  else j.str("cublas", "failed: " + r.timing.error());
}

int usage() {
  std::fprintf(stderr,
               "usage: harness [--list | --verify-golden] [--cases FILE] [--out REPORT.json] [--filter S1,S2]\n"
               "               [--budget SECONDS] [--case-seconds SECONDS]\n");
  return 2;
}

}  // namespace
}  // namespace harness
}  // namespace flashllm

int main(int argc, char** argv) {
  using namespace flashllm::harness;
  std::string cases_path = dir_of(argv[0]) + "/cases.txt", out_path, filter;
  bool list = false, verify = false;
  double budget = 1e9, case_seconds = 0.25;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--list") list = true;
    else if (a == "--verify-golden") verify = true;
    else if (a == "--cases") cases_path = next();
    else if (a == "--out") out_path = next();
    else if (a == "--filter") filter = next();
    else if (a == "--budget") budget = std::atof(next().c_str());
    else if (a == "--case-seconds") case_seconds = std::atof(next().c_str());
    else return usage();
  }
  std::string err;
  std::vector<Case> cases = read_cases(cases_path, err);
  if (!err.empty()) {
    std::fprintf(stderr, "harness: %s\n", err.c_str());
    return 2;
  }
  if (!filter.empty()) {  // comma-separated substrings: a case matching any of them is kept
    std::vector<std::string> parts;
    std::stringstream fs(filter);
    for (std::string part; std::getline(fs, part, ',');) parts.push_back(part);
    cases.erase(std::remove_if(cases.begin(), cases.end(),
                               [&](const Case& c) {
                                 return std::none_of(parts.begin(), parts.end(), [&](const std::string& s) {
                                   return c.name.find(s) != std::string::npos;
                                 });
                               }),
                cases.end());
  }
  if (list) {
    for (const Case& c : cases) std::printf("%-7s %s\n", c.kind.c_str(), c.name.c_str());
    std::printf("%zu cases\n", cases.size());
    return 0;
  }
  if (verify) {
    int bad = 0, n = 0;
    for (const Case& c : cases) {
      if (c.kind != "golden") continue;
      Golden g;
      std::string e = read_golden(dir_of(cases_path) + "/" + c.file, g);
      const Comparison cmp = e.empty() ? compare(g, g.emu) : Comparison{};
      if (e.empty() && !cmp.pass()) e = "the emulator's own result fails the bound";
      if (!e.empty()) std::printf("FAIL %s: %s\n", c.name.c_str(), e.c_str());
      bad += !e.empty();
      ++n;
    }
    std::printf("%d golden files verified, %d bad\n", n, bad);
    return bad ? 1 : 0;
  }
  Run r;
  if (!r.timing.init(err)) {
    std::fprintf(stderr, "harness: no usable CUDA device: %s\n", err.c_str());
    return 2;
  }
  r.report.open(out_path);
  Json& h = r.report.header();
  h.str("device", r.timing.name()).num("sms", r.timing.sms()).num("compute_capability", r.timing.cc());
  h.num("l2_bytes", r.timing.l2_bytes());
  const bool any_speed = std::any_of(cases.begin(), cases.end(), [](const Case& c) { return c.kind == "speed"; });
  if (any_speed) {
    r.timing.measure_copy();
    r.cublas_skip = r.cublas.load();
  }
  h.num("copy_gbs", r.timing.copy_gbs());
  h.str("cublas", any_speed ? (r.cublas_skip.empty() ? r.cublas.path() : "skipped: " + r.cublas_skip) : "not needed");
  r.report.flush();
  std::printf("%s, %d SMs, L2 %lld MB, D2D copy %.0f GB/s, cuBLAS: %s\n", r.timing.name().c_str(),
              r.timing.sms(), (long long)(r.timing.l2_bytes() >> 20), r.timing.copy_gbs(),
              r.cublas_skip.empty() ? r.cublas.path().c_str() : r.cublas_skip.c_str());
  const auto t0 = std::chrono::steady_clock::now();
  int passed = 0, failed = 0, skipped = 0;
  for (const Case& c : cases) {
    Json j;
    j.str("name", c.name).str("kind", c.kind == "golden" ? "correctness" : "speed");
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r.fatal || el > budget) {
      j.str("skipped", r.fatal ? "device failed earlier" : "time budget");
      ++skipped;
      r.report.add(j);
      continue;
    }
    const bool failed_before = r.failed;
    r.failed = false;
    const auto c0 = std::chrono::steady_clock::now();
    if (c.kind == "golden") run_golden(r, c, dir_of(cases_path), j);
    else run_speed(r, c, case_seconds, j);
    j.num("wall_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count());
    r.report.add(j);
    const std::string line = j.text();
    std::printf("%s %s\n", r.failed ? "FAIL" : "ok  ", line.c_str());
    std::fflush(stdout);
    (r.failed ? failed : passed) += 1;
    r.failed = r.failed || failed_before;
  }
  std::printf("harness: %d ok, %d failed, %d skipped%s\n", passed, failed, skipped,
              r.fatal ? " (device failed: sticky CUDA error)" : "");
  return r.fatal ? 2 : (failed ? 1 : 0);
}
