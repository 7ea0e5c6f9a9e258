#include "cpu/spmm_cpu.h"

#include <vector>

#include "flashllm/format.h"

namespace flashllm::cpu {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One task = one tile row (kTileM output features) for all N: its fp32 accumulator (kTileM x N) stays
// in cache while the row's K tiles stream through, and tasks write disjoint columns of y.
template <Dtype D>
void tile_row(const SpmmProblem& p, const float* xt, int64_t mt, std::vector<float>& acc) {
  const int64_t n = p.n;
  const int64_t tiles_k = ceil_div(p.k, kTileK);
  acc.assign(size_t(kTileM) * n, 0.0f);
  for (int64_t kt = 0; kt < tiles_k; ++kt) {
    const int64_t t = mt * tiles_k + kt;
    const float* x_tile = xt + kt * kTileK * n;
    for (int64_t e = p.tile_offsets[t]; e < p.tile_offsets[t + 1]; ++e) {
      // Masking keeps a corrupt location inside the tile: a wrong answer is impossible to hide from
      // validate(), but an out-of-bounds write here would be a crash.
      const int loc = p.locations[e] & (kTileElems - 1);
      const float v = to_float<D>(p.values[e]);
      float* a = acc.data() + int64_t(location_row(loc)) * n;
      const float* xc = x_tile + int64_t(location_col(loc)) * n;
      for (int64_t j = 0; j < n; ++j) a[j] += v * xc[j];
    }
  }
  const int64_t rows = std::min<int64_t>(kTileM, p.m - mt * kTileM);
  for (int64_t j = 0; j < n; ++j) {
    uint16_t* yj = p.y + j * p.m + mt * kTileM;
    for (int64_t r = 0; r < rows; ++r) yj[r] = from_float<D>(acc[r * n + j]);
  }
}

template <Dtype D>
void run(const SpmmProblem& p, int64_t num_workers, const Scheduler& schedule) {
  const int64_t tiles_m = ceil_div(p.m, kTileM);
  const int64_t k_pad = ceil_div(p.k, kTileK) * kTileK;
  // x transposed to (K_pad, N) fp32, zero past K: each nonzero then reads one contiguous N-vector.
  std::vector<float> xt(size_t(k_pad) * p.n, 0.0f);
  for (int64_t j = 0; j < p.n; ++j)
    for (int64_t c = 0; c < p.k; ++c) xt[c * p.n + j] = to_float<D>(p.x[j * p.k + c]);
  parallel_for(tiles_m, num_workers, schedule, [&](int64_t mt) {
    thread_local std::vector<float> acc;
    tile_row<D>(p, xt.data(), mt, acc);
  });
}

}  // namespace

std::string check_problem(const SpmmProblem& p) {
  const int64_t tiles = ceil_div(p.m, kTileM) * ceil_div(p.k, kTileK);
  if (p.tile_offsets[0] != 0) return "tile_offsets[0] must be 0";
  for (int64_t t = 0; t < tiles; ++t) {
    if (p.tile_offsets[t + 1] < p.tile_offsets[t])
      return "tile_offsets must be non-decreasing (tile " + std::to_string(t) + ")";
  }
  if (p.tile_offsets[tiles] != p.num_entries)
    return "tile_offsets[-1] = " + std::to_string(p.tile_offsets[tiles]) + " but there are " +
           std::to_string(p.num_entries) + " entries";
  return {};
}

void spmm(const SpmmProblem& p, int64_t num_workers, const Scheduler& schedule) {
  if (p.n == 0 || p.m == 0) return;
  if (p.dtype == Dtype::kBFloat16) run<Dtype::kBFloat16>(p, num_workers, schedule);
  else run<Dtype::kFloat16>(p, num_workers, schedule);
}

}  // namespace flashllm::cpu
