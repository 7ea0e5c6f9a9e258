// Golden correctness cases of the GPU bundle: the file format written by scripts/gpu_bundle_cases.py
// (see its docstring) and the comparison of a GPU result with it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "flashllm/numeric.h"

namespace flashllm {
namespace harness {

struct Golden {
  int format = 0, dtype = 0, m = 0, k = 0, n = 0, split_k = 1, config = -1, flags = 0;
  std::vector<uint16_t> values;
  std::vector<uint8_t> index;
  std::vector<int32_t> tile_offsets;
  std::vector<uint16_t> x;
  std::vector<float> ref, scale;
  std::vector<uint16_t> emu;
};

// Reads a golden file; returns "" or what is wrong.
inline std::string read_golden(const std::string& path, Golden& g) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return "cannot open " + path;
  auto get = [&](void* dst, size_t bytes) { return std::fread(dst, 1, bytes, f) == bytes; };
  char magic[8];
  int32_t hdr[8];
  int64_t counts[2];
  bool ok = get(magic, 8) && std::memcmp(magic, "FLMGOLD1", 8) == 0 && get(hdr, sizeof hdr) &&
            get(counts, sizeof counts);
  if (ok) {
    g.format = hdr[0], g.dtype = hdr[1], g.m = hdr[2], g.k = hdr[3], g.n = hdr[4];
    g.split_k = hdr[5], g.config = hdr[6], g.flags = hdr[7];
    const int64_t tiles = int64_t((g.m + 127) / 128) * ((g.k + 63) / 64);
    const size_t nm = size_t(g.n) * size_t(g.m);
    g.values.resize(size_t(counts[0]));
    g.index.resize(size_t(counts[1]));
    g.tile_offsets.resize(size_t(tiles + 1));
    g.x.resize(size_t(g.n) * size_t(g.k));
    g.ref.resize(nm);
    g.scale.resize(nm);
    g.emu.resize(nm);
    ok = get(g.values.data(), g.values.size() * 2) && get(g.index.data(), g.index.size()) &&
         get(g.tile_offsets.data(), g.tile_offsets.size() * 4) && get(g.x.data(), g.x.size() * 2) &&
         get(g.ref.data(), nm * 4) && get(g.scale.data(), nm * 4) && get(g.emu.data(), nm * 2);
  }
  std::fclose(f);
  return ok ? "" : "malformed golden file " + path;
}

// The bound of gpu_bundle_cases.py: |y - ref| <= eps |ref| + kAccumRel * scale + tiny, NaN exactly
// where ref is NaN, exactly 0 where scale is 0.
constexpr double kAccumRel = 1.0 / 16384;  // 2^-14

struct Comparison {
  int64_t outside = 0, nan_mismatch = 0, zero_mismatch = 0, bitwise_equal_to_emu = 0;
  double worst_ratio = 0;  // max |y - ref| / bound over finite outputs
  int64_t first_bad = -1;
  bool pass() const { return outside == 0 && nan_mismatch == 0 && zero_mismatch == 0; }
};

inline Comparison compare(const Golden& g, const std::vector<uint16_t>& y) {
  const bool bf16 = g.dtype == 1;
  const double eps = bf16 ? 1.0 / 128 : 1.0 / 1024;
  const double tiny = bf16 ? 1.1754943508222875e-38 : 6.103515625e-05;
  Comparison c;
  for (size_t i = 0; i < y.size(); ++i) {
    const double v = bf16 ? to_float<Bf16>(y[i]) : to_float<Fp16>(y[i]);
    const double r = g.ref[i];
    bool bad = false;
    if (std::isnan(r) != std::isnan(v)) {
      ++c.nan_mismatch;
      bad = true;
    } else if (!std::isnan(r)) {
      const double bound = eps * std::fabs(r) + kAccumRel * g.scale[i] + tiny;
      const double err = std::fabs(v - r);
      if (err / bound > c.worst_ratio) c.worst_ratio = err / bound;
      if (!(err <= bound)) ++c.outside, bad = true;
      if (g.scale[i] == 0.f && v != 0.0) ++c.zero_mismatch, bad = true;
    }
    if (bad && c.first_bad < 0) c.first_bad = int64_t(i);
    if (y[i] == g.emu[i]) ++c.bitwise_equal_to_emu;
  }
  return c;
}

}  // namespace harness
}  // namespace flashllm
