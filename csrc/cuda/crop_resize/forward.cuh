// crop_resize's forward kernel (the hot path). One launch per call, a 1-D grid: each block
// covers a tile of one box's output, kPixels pixels per thread. The mode is a template
// parameter, so each mode compiles to its own kernel with only its taps in registers (and its
// own launch bounds). The interpolating path puts the lanes of a warp on consecutive output
// columns (a thread takes kPixels rows of one column), computes its column taps once and each
// row's taps (sampling.h, positions in double), then, for every chunk of kChannelChunk
// channels, loads all of them before storing any (the loads overlap; channel slots past C are
// predicated off), applies the normalisation in the accumulation type (float unless float64 is
// involved) and stores. Integer boxes of the output's size (GFNet's focus crops) take a copy
// path in the same kernel that computes no taps: a thread moves kPixels consecutive pixels of a
// row, with vector loads and stores where the rows allow. Boxes are read in their own dtype and
// strides and batch_index with its stride, and the output is written through its strides
// (contiguous or channels_last, OutputLayout): the call launches nothing but the kernel (its
// launch is launch_forward in ../crop_resize.cu, whose translation unit this header is part of).
#pragma once

#include <climits>
#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace gfkernels {
namespace {

constexpr int kChannelChunk = 4;  // channels a forward thread loads before it stores

// The shape of each mode's forward kernel. A thread owns kPixels output pixels: in the copy
// path consecutive pixels of a row (moved as one vector), in the interpolating path one column
// of kPixels rows (the lanes of a warp on consecutive columns), taken kGroup rows at a time, so
// that a thread holds kPixels row taps whatever the mode, and loads the taps of kChannels
// channels before storing any, so that kGroup * kChannels * taps^2 loads are in flight. The launch bounds (kMinBlocks blocks of kThreads per SM, i.e. at most
// 65536 / (256 * kMinBlocks) registers) are the tightest at which no instantiation spills on
// sm_90 (make gpu-report; float64 needs twice the registers for the same work, so it gets half
// the blocks).
constexpr int kPixels = 4;
template <Mode MODE, typename acc_t>
struct ForwardShape {
  static constexpr int kGroup = kPixels / taps_of(MODE), kChannels = kChannelChunk;
  static constexpr int kMinBlocks =
      std::is_same_v<acc_t, double> ? 2 : (MODE == Mode::Bicubic ? 3 : 4);
};

// N values of type T that move as one (vector) load or store when aligned.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ bool aligned_for(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// out[k * stride] = v[k] * scale + shift for the n (<= N) pixels of a group, one vector store
// when the row is contiguous, the whole group is there and the address is aligned.
template <int N, typename out_t, typename acc_t>
__device__ __forceinline__ void store_pixels(out_t* __restrict__ dst, int stride,
                                             const acc_t (&v)[N], int n, acc_t scale,
                                             acc_t shift) {
  Pack<out_t, N> pack;
#pragma unroll
  for (int k = 0; k < N; ++k) pack.v[k] = static_cast<out_t>(v[k] * scale + shift);
  if (stride == 1 && n == N && aligned_for<N>(dst)) {
    *reinterpret_cast<Pack<out_t, N>*>(dst) = pack;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (k < n) dst[k * stride] = pack.v[k];
    }
  }
}

// v[k] = src[k * stride] for the n (<= N) pixels of a group, one vector load when the row is
// contiguous, the whole group is there and the address is aligned.
template <int N, typename in_t, typename acc_t>
__device__ __forceinline__ void load_pixels(const in_t* __restrict__ src, int64_t stride, int n,
                                            acc_t (&v)[N]) {
  if (stride == 1 && n == N && aligned_for<N>(src)) {
    const Pack<in_t, N> pack = *reinterpret_cast<const Pack<in_t, N>*>(src);
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = static_cast<acc_t>(pack.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = k < n ? static_cast<acc_t>(src[k * stride]) : acc_t(0);
  }
}

// The taps of one output pixel along one axis, as the forward keeps them: indices (int32, an
// image axis is < 2^31) and weights in the accumulation type.
template <int T, typename acc_t>
struct AxisTaps {
  int index[T];
  acc_t weight[T];
};

template <Mode MODE, typename acc_t>
__device__ __forceinline__ AxisTaps<taps_of(MODE), acc_t> axis_taps(double lo, double hi,
                                                                     int64_t o, int64_t out,
                                                                     int64_t size,
                                                                     Padding padding,
                                                                     bool align_corners) {
  Taps t;
  make_taps(source_position(lo, hi, o, out, align_corners), size, MODE, padding, t);
  AxisTaps<taps_of(MODE), acc_t> a;
#pragma unroll
  for (int k = 0; k < taps_of(MODE); ++k) {
    a.index[k] = static_cast<int>(t.index[k]);
    a.weight[k] = static_cast<acc_t>(t.weight[k]);
  }
  return a;
}

// One image of the batch as the forward reads it: sizes and strides in 32 bits (the host checks
// that every offset inside one image, and inside one box's output, fits), the batch stride in 64.
struct ImageLayout {
  int C, H, W, sC, sH, sW;
  int64_t sN;
};

ImageLayout image_layout(const at::Tensor& images, int64_t h, int64_t w) {
  const Geometry g = geometry_of(images);
  const int64_t last = (g.C - 1) * g.sC + (g.H - 1) * g.sH + (g.W - 1) * g.sW;
  TORCH_CHECK_VALUE(last < INT_MAX && g.C * h * w <= kMaxPixels,
                    "crop_resize: an image of shape ", images.sizes(), " with strides ",
                    images.strides(), " and crops of ", h, " x ", w, " are too large for the CUDA "
                    "kernels (offsets inside one image and one crop must fit in 32 bits)");
  return {static_cast<int>(g.C),  static_cast<int>(g.H),  static_cast<int>(g.W),
          static_cast<int>(g.sC), static_cast<int>(g.sH), static_cast<int>(g.sW), g.sN};
}

// The strides of one box's output (C * h * w elements apart in both layouts): contiguous
// (h * w, w, 1) or channels_last (1, w * C, C).
struct OutputLayout {
  int sC, sH, sW;
};

template <Mode MODE, typename in_t, typename out_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, (ForwardShape<MODE, acc_t>::kMinBlocks))
    forward_kernel(const in_t* __restrict__ img, Boxes boxes, BatchIndex batch_index,
                   out_t* __restrict__ out, ImageLayout g, OutputLayout o, int h, int w,
                   int groups_per_row,
                   int blocks_per_box, Padding padding, bool align_corners,
                   const __grid_constant__ Affine<acc_t> affine) {
  constexpr int P = kPixels;
  constexpr int T = taps_of(MODE);
  const int64_t b = blockIdx.x / blocks_per_box;
  const int tile = static_cast<int>(blockIdx.x - b * blocks_per_box);
  const int plane_out = h * w;
  out_t* const box_out = out + b * g.C * plane_out;
  const in_t* const image = img + batch_index.image_of(b) * g.sN;
  const Box box = boxes.load(b);

  if (is_exact_copy(box.x1, box.x2, w, g.W) && is_exact_copy(box.y1, box.y2, h, g.H)) {
    // An integer box of the output's size: a copy, no taps. A thread moves its group of P
    // consecutive pixels as one vector, so a warp still reads and writes one contiguous span.
    const int64_t thread = static_cast<int64_t>(tile) * blockDim.x + threadIdx.x;
    if (thread >= static_cast<int64_t>(h) * groups_per_row) return;  // (the grid may hold more)
    const int group = static_cast<int>(thread);
    const int i = group / groups_per_row;
    const int j0 = (group - i * groups_per_row) * P;
    const int n_pix = min(P, w - j0);
    out_t* dst = box_out + (i * o.sH + j0 * o.sW);
    const in_t* src = image + ((static_cast<int>(box.y1) + i) * g.sH +
                               (static_cast<int>(box.x1) + j0) * g.sW);
    for (int c0 = 0; c0 < g.C; c0 += kChannelChunk) {
      acc_t v[kChannelChunk][P];
#pragma unroll
      for (int cc = 0; cc < kChannelChunk; ++cc) {
        if (c0 + cc < g.C) load_pixels<P>(src + (c0 + cc) * g.sC, g.sW, n_pix, v[cc]);
      }
#pragma unroll
      for (int cc = 0; cc < kChannelChunk; ++cc) {
        const int c = c0 + cc;
        if (c < g.C) {
          store_pixels<P>(dst + c * o.sC, o.sW, v[cc], n_pix, affine.scale_of(c),
                          affine.shift_of(c));
        }
      }
    }
    return;
  }

  // Interpolating: the lanes of a warp sit on consecutive output columns, so that a warp's tap
  // loads fall on neighbouring source columns (a few cache lines per tap row, where lanes P
  // pixels apart touched several times as many). Thread t of the box covers column
  // j = t % strip and rows band * P .. band * P + P - 1, band = t / strip (strip: w rounded up
  // to whole warps; lanes past w are idle): its column taps are computed once, its row taps per
  // row, G rows at a time, with the taps of CH channels loaded before any store and channel
  // slots beyond C predicated off (no load, no store).
  constexpr int G = ForwardShape<MODE, acc_t>::kGroup;
  constexpr int CH = ForwardShape<MODE, acc_t>::kChannels;
  const int strip = (w + 31) / 32 * 32;
  // in 64 bits: with w < 32, the threads of a box, (h / P) * 32, may pass INT_MAX
  const int64_t thread = static_cast<int64_t>(tile) * blockDim.x + threadIdx.x;
  const int band = static_cast<int>(thread / strip);  // band * P < h once checked below
  const int j = static_cast<int>(thread - static_cast<int64_t>(band) * strip);
  if (j >= w || band * P >= h) return;
  const AxisTaps<T, acc_t> tx =
      axis_taps<MODE, acc_t>(box.x1, box.x2, j, w, g.W, padding, align_corners);
  int col[T];  // offsets of the columns read, inside the image
#pragma unroll
  for (int t = 0; t < T; ++t) col[t] = tx.index[t] * g.sW;
  const int n_rows = min(P, h - band * P);
#pragma unroll 1
  for (int k0 = 0; k0 < n_rows; k0 += G) {
    const int n_group = min(G, n_rows - k0);
    acc_t wy[G][T];
    int row[G][T];  // offsets of the rows read
#pragma unroll
    for (int k = 0; k < G; ++k) {
      // Rows past the output's end sample the group's last one: valid taps, never stored.
      const AxisTaps<T, acc_t> ty = axis_taps<MODE, acc_t>(
          box.y1, box.y2, band * P + k0 + min(k, n_group - 1), h, g.H, padding, align_corners);
#pragma unroll
      for (int a = 0; a < T; ++a) {
        wy[k][a] = ty.weight[a];
        row[k][a] = ty.index[a] * g.sH;
      }
    }
    out_t* dst = box_out + (band * P + k0) * o.sH + j * o.sW;
#pragma unroll 1
    for (int c0 = 0; c0 < g.C; c0 += CH) {
      acc_t v[CH][G];
#pragma unroll
      for (int cc = 0; cc < CH; ++cc) {
        if (c0 + cc < g.C) {  // the same for every thread: a predicate, not a divergence
          const in_t* plane = image + (c0 + cc) * g.sC;
#pragma unroll
          for (int k = 0; k < G; ++k) {
            acc_t sum = 0;
#pragma unroll
            for (int a = 0; a < T; ++a) {
              acc_t r = 0;
#pragma unroll
              for (int t = 0; t < T; ++t) {
                r += tx.weight[t] * static_cast<acc_t>(plane[row[k][a] + col[t]]);
              }
              sum += wy[k][a] * r;
            }
            v[cc][k] = sum;
          }
        }
      }
#pragma unroll
      for (int cc = 0; cc < CH; ++cc) {
        const int c = c0 + cc;
        if (c < g.C) {
          const acc_t scale = affine.scale_of(c), shift = affine.shift_of(c);
#pragma unroll
          for (int k = 0; k < G; ++k) {
            if (k < n_group) dst[c * o.sC + k * o.sH] = static_cast<out_t>(v[cc][k] * scale + shift);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace gfkernels
