// crop_resize's backward wrt images, two ways: with atomics (one thread per output pixel:
// blockIdx.y picks the box, a grid-stride loop covers B > 65535, and
// blockIdx.x * blockDim.x + threadIdx.x the pixel), or, under
// torch.use_deterministic_algorithms(True), as a gather with a fixed summation order (one
// thread per image pixel, grid-stride). Their launches are in ../crop_resize.cu, whose
// translation unit this header is part of.
#pragma once

#include <climits>
#include <cstdint>

#include "common.cuh"

namespace gfkernels {
namespace {

// ---------------------------------------------------------------------------------------
// Atomics: every output pixel scatters into the taps it read.
// ---------------------------------------------------------------------------------------

// The output pixel p = i * w + j of an h x w crop that this thread computes (threads of a block
// row cover consecutive pixels); false for the threads past the end.
__device__ __forceinline__ bool pixel_of_thread(int h, int w, int& p, int& i, int& j) {
  p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= h * w) return false;
  i = p / w;
  j = p - i * w;
  return true;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_images_atomic_kernel(AnyFloat grad, Boxes boxes, BatchIndex batch_index,
                                  acc_t* __restrict__ grad_images, Geometry g, int64_t B, int h,
                                  int w, Mode mode, Padding padding, bool align_corners,
                                  const __grid_constant__ Affine<acc_t> affine) {
  const int hw = h * w;
  int p, i, j;
  if (!pixel_of_thread(h, w, p, i, j)) return;
  const int nt = taps_of(mode);
  const int64_t plane_size = g.H * g.W;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t n = batch_index.image_of(b);
    const Box box = boxes.load(b);
    acc_t* planes = grad_images + n * g.C * plane_size;
    const int64_t gbase = b * g.C * hw + p;
    if (is_exact_copy(box.x1, box.x2, w, g.W) && is_exact_copy(box.y1, box.y2, h, g.H)) {
      const int64_t off = (static_cast<int64_t>(box.y1) + i) * g.W + static_cast<int64_t>(box.x1) + j;
      for (int64_t c = 0; c < g.C; ++c) {
        const acc_t gv = grad.load<acc_t>(gbase + c * hw) * affine.scale_of(c);
        if (gv != acc_t(0)) atomicAdd(planes + c * plane_size + off, gv);
      }
      continue;
    }
    Taps ty, tx;
    device_taps(source_position(box.y1, box.y2, i, h, align_corners), g.H, mode, padding, ty);
    device_taps(source_position(box.x1, box.x2, j, w, align_corners), g.W, mode, padding, tx);
    for (int64_t c = 0; c < g.C; ++c) {
      const acc_t gv = grad.load<acc_t>(gbase + c * hw) * affine.scale_of(c);
      if (gv == acc_t(0)) continue;
      acc_t* plane = planes + c * plane_size;
#pragma unroll
      for (int a = 0; a < kMaxTaps; ++a) {
        if (a < nt) {
          const acc_t wy = static_cast<acc_t>(ty.weight[a]);
          if (wy == acc_t(0)) continue;
          acc_t* row = plane + ty.index[a] * g.W;
#pragma unroll
          for (int k = 0; k < kMaxTaps; ++k) {
            if (k < nt) {
              const acc_t wv = wy * static_cast<acc_t>(tx.weight[k]);
              if (wv != acc_t(0)) atomicAdd(row + tx.index[k], wv * gv);
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward wrt images, deterministic: a gather. Each image pixel (n, c, y, x) loops, in a
// fixed order, over the boxes that read image n (a CSR built by a stable sort of
// batch_index), over the output rows whose taps touch row y and the output columns whose
// taps touch column x. Those index ranges are contiguous (positions are monotone in the
// output index, and so are their clamped taps) and are found once per (box, row) and
// (box, column) by binary search over tap tables.
// ---------------------------------------------------------------------------------------

// Taps of every output index of every box along one axis: index[B][out][4] (-1 for unused
// taps), weight[B][out][4], span[B][out][2] = (smallest, largest) index read.
template <typename acc_t>
__global__ void axis_table_kernel(Boxes boxes, int64_t B, int lo_col, int hi_col, int64_t out,
                                  int64_t size, Mode mode, Padding padding, bool align_corners,
                                  int* __restrict__ index, acc_t* __restrict__ weight,
                                  int* __restrict__ span) {
  const int nt = taps_of(mode);
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < B * out;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / out, o = t - b * out;
    Taps taps;
    device_taps(source_position(boxes.at(b, lo_col), boxes.at(b, hi_col), o, out, align_corners),
                size, mode, padding, taps);
    int lo = INT_MAX, hi = -1;
#pragma unroll
    for (int k = 0; k < kMaxTaps; ++k) {
      const bool used = k < nt;
      const int idx = used ? static_cast<int>(taps.index[k]) : -1;
      index[t * kMaxTaps + k] = idx;
      weight[t * kMaxTaps + k] = used ? static_cast<acc_t>(taps.weight[k]) : acc_t(0);
      if (used) {
        lo = min(lo, idx);
        hi = max(hi, idx);
      }
    }
    span[t * 2 + 0] = lo;
    span[t * 2 + 1] = hi;
  }
}

// For each box b and pixel x along one axis: range[b][x] = (first, last) output indices whose
// taps touch x (first > last: none).
__global__ void axis_range_kernel(Boxes boxes, int64_t B, int lo_col, int hi_col, int64_t out,
                                  int64_t size, bool align_corners, const int* __restrict__ span,
                                  int* __restrict__ range) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < B * size;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / size;
    const int x = static_cast<int>(t - b * size);
    const double lo = boxes.at(b, lo_col), hi = boxes.at(b, hi_col);
    // The positions of the first and last output index, clamped as make_taps clamps them.
    const double p0 = clamp_position(source_position(lo, hi, 0, out, align_corners), size);
    const double p1 = clamp_position(source_position(lo, hi, out - 1, out, align_corners), size);
    const bool increasing = !(p1 < p0);
    const int* s = span + b * out * 2;
    // Smallest o in [0, out] for which a monotone (false..true) predicate holds.
    auto first_true = [&](auto pred) {
      int64_t a = 0, z = out;
      while (a < z) {
        const int64_t m = (a + z) / 2;
        if (pred(m)) z = m; else a = m + 1;
      }
      return static_cast<int>(a);
    };
    int first, last;
    if (increasing) {
      first = first_true([&](int64_t o) { return s[o * 2 + 1] >= x; });
      last = first_true([&](int64_t o) { return s[o * 2] > x; }) - 1;
    } else {
      first = first_true([&](int64_t o) { return s[o * 2] <= x; });
      last = first_true([&](int64_t o) { return s[o * 2 + 1] < x; }) - 1;
    }
    range[t * 2 + 0] = first;
    range[t * 2 + 1] = last;
  }
}

// offsets[n] = first position of image n in the sorted batch_index (n in [0, N]). Values out
// of [0, N) trip a device assert and count for the nearest image, as the atomic path and the
// forward clamp them (clamping keeps the sorted order, so the binary search stays valid).
__global__ void image_offsets_kernel(const int64_t* __restrict__ sorted, int64_t B, int64_t N,
                                     int64_t* __restrict__ offsets) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n > N) return;
  if (n == 0 && B > 0) {
    CUDA_KERNEL_ASSERT_MSG(sorted[0] >= 0 && sorted[B - 1] < N,
                           "crop_resize: batch_index values must lie in [0, N)");
  }
  int64_t a = 0, z = B;
  while (a < z) {
    const int64_t m = (a + z) / 2;
    if (clamp_index(sorted[m], N) >= n) z = m; else a = m + 1;
  }
  offsets[n] = a;
}

template <typename acc_t>
__device__ __forceinline__ acc_t weight_at(const int* index, const acc_t* weight, int pixel) {
  acc_t v = 0;
#pragma unroll
  for (int k = 0; k < kMaxTaps; ++k) {
    if (index[k] == pixel) v += weight[k];  // clamped taps may repeat a pixel: sum them
  }
  return v;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_images_gather_kernel(AnyFloat grad, const int64_t* __restrict__ order,
                                  const int64_t* __restrict__ offsets, int64_t N, int64_t C,
                                  int64_t H, int64_t W, int h, int w,
                                  const int* __restrict__ yindex, const acc_t* __restrict__ yweight,
                                  const int* __restrict__ yrange, const int* __restrict__ xindex,
                                  const acc_t* __restrict__ xweight,
                                  const int* __restrict__ xrange, acc_t* __restrict__ grad_images,
                                  const __grid_constant__ Affine<acc_t> affine) {
  const int64_t total = N * C * H * W;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = t % W, y = (t / W) % H, c = (t / (W * H)) % C, n = t / (W * H * C);
    const int64_t k0 = order != nullptr ? offsets[n] : n;
    const int64_t k1 = order != nullptr ? offsets[n + 1] : n + 1;
    acc_t acc = 0;
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t b = order != nullptr ? order[k] : k;
      const int i0 = yrange[(b * H + y) * 2], i1 = yrange[(b * H + y) * 2 + 1];
      const int j0 = xrange[(b * W + x) * 2], j1 = xrange[(b * W + x) * 2 + 1];
      if (i0 > i1 || j0 > j1) continue;
      const int64_t gplane = (b * C + c) * h;
      for (int i = i0; i <= i1; ++i) {
        const int64_t yt = (b * h + i) * kMaxTaps;
        const acc_t wy = weight_at(yindex + yt, yweight + yt, static_cast<int>(y));
        if (wy == acc_t(0)) continue;
        const int64_t grow = (gplane + i) * w;
        acc_t r = 0;
        for (int j = j0; j <= j1; ++j) {
          const int64_t xt = (b * w + j) * kMaxTaps;
          const acc_t wx = weight_at(xindex + xt, xweight + xt, static_cast<int>(x));
          if (wx != acc_t(0)) r += wx * grad.load<acc_t>(grow + j);
        }
        acc += wy * r;
      }
    }
    grad_images[t] = acc * affine.scale_of(c);
  }
}

}  // namespace
}  // namespace gfkernels
