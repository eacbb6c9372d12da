// The order in which the fused kernels' thread blocks walk a factor's output, shared by host and
// device code (C++17, no CUDA headers).
//
// A block owns (i, j-group, r-tile, n-tile). Blocks that run at the same time should share
// what they read, so it is served from L2: from slowest to fastest the order is
//   i, outer j-group, n-tile, r-tile, inner j-group.
// For one (i, j-group) the w slice (b × c × JT values) stays in L2 while every n-tile passes
// over it; the r-tiles of one n-tile run together and share the x tile; and `j_inner` adjacent
// j-groups run together so x's runs along j (JT values, often under a 32-byte sector) are
// fetched once, not once per j-group.
#pragma once

#include <cstdint>

#include "kernels/epilogue.h"  // KSSERVE_HOST_DEVICE
#include "kernels/ks_params.h"

namespace ksserve::kernels {

struct BlockGrid {
  int64_t a = 1;
  int64_t j_groups = 1;  // ceil(d / JT)
  int64_t r_tiles = 1;   // ceil(b / BN)
  int64_t n_tiles = 1;   // ceil(batch / BM)
  int64_t j_inner = 1;   // divides j_groups

  constexpr int64_t blocks() const { return a * j_groups * r_tiles * n_tiles; }
};

struct BlockCoords {
  int64_t i = 0, jg = 0, rt = 0, nt = 0;
};

KSSERVE_HOST_DEVICE inline BlockCoords DecodeBlock(const BlockGrid& g, int64_t block) {
  BlockCoords c;
  const int64_t per_i = g.j_groups * g.r_tiles * g.n_tiles;
  c.i = block / per_i;
  block %= per_i;
  const int64_t per_outer = g.j_inner * g.r_tiles * g.n_tiles;
  const int64_t j_outer = block / per_outer;
  block %= per_outer;
  c.nt = block / (g.r_tiles * g.j_inner);
  block %= g.r_tiles * g.j_inner;
  c.rt = block / g.j_inner;
  c.jg = j_outer * g.j_inner + block % g.j_inner;
  return c;
}

// j_inner: enough adjacent j-groups for 128-byte runs of x, as long as the w slice they share
// stays within a third of a 50 MB L2; a power of two that divides j_groups.
inline BlockGrid MakeBlockGrid(const KsPattern& p, int64_t batch, int jt, int bm, int bn, int element_bytes) {
  BlockGrid g{.a = p.a,
              .j_groups = (p.d + jt - 1) / jt,
              .r_tiles = (p.b + bn - 1) / bn,
              .n_tiles = (batch + bm - 1) / bm,
              .j_inner = 1};
  const int64_t w_slice_bytes = p.b * p.c * jt * element_bytes;
  while (g.j_groups % (g.j_inner * 2) == 0 && g.j_inner * jt * element_bytes < 128 &&
         w_slice_bytes * g.j_inner * 2 <= (int64_t{16} << 20)) {
    g.j_inner *= 2;
  }
  return g;
}

}  // namespace ksserve::kernels
