// crop_resize's backward wrt boxes: blocks (s, b) sum their pixels' contributions in
// registers, reduce them in the block (warp shuffles, then shared memory) and write one partial
// per block; the partials are summed in a fixed order. Deterministic, no atomics. Its launch is
// in ../crop_resize.cu, whose translation unit this header is part of.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace gfkernels {
namespace {

constexpr int kBoxSums = 4;

__device__ __forceinline__ void block_reduce(double (&v)[kBoxSums], double* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int k = 0; k < kBoxSums; ++k) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kBoxSums; ++k) shared[k * 32 + warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < kBoxSums; ++k) {
      v[k] = lane < warps ? shared[k * 32 + lane] : 0.0;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
  }
  __syncthreads();  // `shared` is reused by the next box
}

template <typename in_t>
__global__ void __launch_bounds__(kThreads)
    backward_boxes_kernel(AnyFloat grad, const in_t* __restrict__ img, Boxes boxes,
                          BatchIndex batch_index, Geometry g, int64_t B, int h, int w, Mode mode,
                          Padding padding, bool align_corners,
                          const __grid_constant__ Affine<double> affine,
                          double* __restrict__ partial) {
  __shared__ double shared[kBoxSums * 32];
  const int64_t hw = static_cast<int64_t>(h) * w;
  const int nt = taps_of(mode);
  const int S = gridDim.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const in_t* plane = img + batch_index.image_of(b) * g.sN;
    const Box box = boxes.load(b);
    double sums[kBoxSums] = {0.0, 0.0, 0.0, 0.0};  // dx1, dy1, dx2, dy2
    // 64-bit pixel index: p + S * blockDim.x may pass 2^31 on the last stride.
    for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < hw;
         p += static_cast<int64_t>(S) * blockDim.x) {
      const int i = static_cast<int>(p / w), j = static_cast<int>(p - static_cast<int64_t>(i) * w);
      Taps ty, tx;
      device_taps(source_position(box.y1, box.y2, i, h, align_corners), g.H, mode, padding, ty);
      device_taps(source_position(box.x1, box.x2, j, w, align_corners), g.W, mode, padding, tx);
      double gx = 0.0, gy = 0.0;  // d loss / d (column position), d loss / d (row position)
      for (int64_t c = 0; c < g.C; ++c) {
        const double gv = grad.load<double>((b * g.C + c) * hw + p) * affine.scale_of(c);
        if (gv == 0.0) continue;
        const in_t* src = plane + c * g.sC;
        double dvx = 0.0, dvy = 0.0;
#pragma unroll
        for (int a = 0; a < kMaxTaps; ++a) {
          if (a < nt) {
            const in_t* row = src + ty.index[a] * g.sH;
            double r = 0.0, dr = 0.0;
#pragma unroll
            for (int k = 0; k < kMaxTaps; ++k) {
              if (k < nt) {
                const double v = static_cast<double>(row[tx.index[k] * g.sW]);
                r += tx.weight[k] * v;
                dr += tx.dweight[k] * v;
              }
            }
            dvx += ty.weight[a] * dr;
            dvy += ty.dweight[a] * r;
          }
        }
        gx += gv * dvx;
        gy += gv * dvy;
      }
      const double fx = source_position_dhi(j, w, align_corners);
      const double fy = source_position_dhi(i, h, align_corners);
      sums[0] += gx * (1.0 - fx);
      sums[2] += gx * fx;
      sums[1] += gy * (1.0 - fy);
      sums[3] += gy * fy;
    }
    block_reduce(sums, shared);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int k = 0; k < kBoxSums; ++k) partial[(b * S + blockIdx.x) * kBoxSums + k] = sums[k];
    }
  }
}

}  // namespace
}  // namespace gfkernels
