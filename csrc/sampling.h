// The maths of crop_resize, defined once and shared by the CPU and CUDA kernels.
//
// Nothing here depends on Torch, so the C++ unit tests (tests/cpp/) build in seconds, and the
// same inline functions compile for the host and, under nvcc, for the device.
//
// Conventions (docs/OPS.md, "crop_resize"): pixel (row i, col j) covers [j, j+1) x
// [i, i+1); a box is (x1, y1, x2, y2) in those units. Output column j samples the source
// position returned by source_position(); each interpolation mode turns a position into a
// few taps (index, weight, d weight / d position).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GFK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GFK_HOST_DEVICE inline
#endif

namespace gfkernels {

enum class Mode : int { Nearest = 0, Bilinear = 1, Bicubic = 2 };
enum class Padding : int { Border = 0, Zeros = 1 };

// Keys' cubic convolution constant, the one PyTorch's bicubic uses.
constexpr double kCubicA = -0.75;

// Largest number of taps of any mode (bicubic).
constexpr int kMaxTaps = 4;

// crop_resize refuses outputs of more than this many elements (C * h * w) per box on every
// backend: the GPU kernels index pixels in 32 bits, with room for a tile. The Python side holds
// the same number (gfkernels/contract.py, MAX_OUTPUT_ELEMENTS_PER_BOX; a test checks they agree).
constexpr int64_t kMaxOutputElementsPerBox = int64_t{2147483647} - (int64_t{1} << 20);

GFK_HOST_DEVICE constexpr int taps_of(Mode mode) {
  return mode == Mode::Nearest ? 1 : (mode == Mode::Bilinear ? 2 : 4);
}

// Source position of output index j (0 <= j < out) for a box [lo, hi) along one axis.
//   align_corners=false: lo + (j + 0.5) * (hi - lo) / out - 0.5
//   align_corners=true:  lo + j * (hi - lo - 1) / (out - 1), and lo + (hi - lo - 1) / 2 if out == 1
// so the whole-image box reproduces F.interpolate, and an integer box of size out is a copy.
GFK_HOST_DEVICE double source_position(double lo, double hi, int64_t j, int64_t out,
                                       bool align_corners) {
  const double extent = hi - lo;
  if (align_corners) {
    if (out == 1) return lo + (extent - 1.0) * 0.5;
    return lo + static_cast<double>(j) * (extent - 1.0) / static_cast<double>(out - 1);
  }
  return lo + (static_cast<double>(j) + 0.5) * extent / static_cast<double>(out) - 0.5;
}

// d source_position / d hi for output index j; d / d lo is 1 minus this (the position is
// affine in lo and hi with coefficients summing to one).
GFK_HOST_DEVICE double source_position_dhi(int64_t j, int64_t out, bool align_corners) {
  if (align_corners) {
    if (out == 1) return 0.5;
    return static_cast<double>(j) / static_cast<double>(out - 1);
  }
  return (static_cast<double>(j) + 0.5) / static_cast<double>(out);
}

// Keys' cubic kernel weights for the taps at floor(x) - 1 .. floor(x) + 2, t = x - floor(x).
GFK_HOST_DEVICE void cubic_weights(double t, double w[4]) {
  const double a = kCubicA;
  const double t1 = t + 1.0, s = 1.0 - t, s1 = 2.0 - t;
  // |d| in [1, 2): a|d|^3 - 5a|d|^2 + 8a|d| - 4a ; |d| < 1: (a+2)|d|^3 - (a+3)|d|^2 + 1
  w[0] = ((a * t1 - 5.0 * a) * t1 + 8.0 * a) * t1 - 4.0 * a;
  w[1] = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
  w[2] = ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0;
  w[3] = ((a * s1 - 5.0 * a) * s1 + 8.0 * a) * s1 - 4.0 * a;
}

// d weight / d t of cubic_weights.
GFK_HOST_DEVICE void cubic_weight_derivatives(double t, double dw[4]) {
  const double a = kCubicA;
  const double t1 = t + 1.0, s = 1.0 - t, s1 = 2.0 - t;
  dw[0] = (3.0 * a * t1 - 10.0 * a) * t1 + 8.0 * a;
  dw[1] = (3.0 * (a + 2.0) * t - 2.0 * (a + 3.0)) * t;
  dw[2] = -((3.0 * (a + 2.0) * s - 2.0 * (a + 3.0)) * s);
  dw[3] = -((3.0 * a * s1 - 10.0 * a) * s1 + 8.0 * a);
}

// The taps one source position reads along one axis of length `size`.
struct Taps {
  int64_t index[kMaxTaps];   // always inside [0, size): never an out-of-bounds read
  double weight[kMaxTaps];   // 0 for a tap outside the image under Padding::Zeros
  double dweight[kMaxTaps];  // d weight / d position (0 for nearest)
};

GFK_HOST_DEVICE int64_t clamp_index(int64_t i, int64_t size) {
  return i < 0 ? 0 : (i >= size ? size - 1 : i);
}

// A source position clamped to [-4, size + 4], as make_taps reads it. The clamp changes no
// result (every tap lies outside the image there either way, and border weights sum to one)
// but keeps huge positions from overflowing the index, and turns NaN into a valid position
// (fmax(NaN, v) is v).
GFK_HOST_DEVICE double clamp_position(double x, int64_t size) {
  return fmin(fmax(x, -4.0), static_cast<double>(size) + 4.0);
}

// Turns a source position into taps. Border padding clamps each tap to the image (so a
// bilinear position just outside the edge reads the edge, as F.interpolate does); zeros
// padding gives outside taps weight 0 (and reads a clamped, valid index).
GFK_HOST_DEVICE void make_taps(double x, int64_t size, Mode mode, Padding padding, Taps& taps) {
  x = clamp_position(x, size);
  int64_t first;
  int n;
  if (mode == Mode::Nearest) {
    // floor(x + 0.5): F.interpolate's "nearest-exact" for the whole-image box.
    first = static_cast<int64_t>(floor(x + 0.5));
    n = 1;
    taps.weight[0] = 1.0;
    taps.dweight[0] = 0.0;
  } else if (mode == Mode::Bilinear) {
    const double f = floor(x);
    const double t = x - f;
    first = static_cast<int64_t>(f);
    n = 2;
    taps.weight[0] = 1.0 - t;
    taps.weight[1] = t;
    taps.dweight[0] = -1.0;
    taps.dweight[1] = 1.0;
  } else {
    const double f = floor(x);
    const double t = x - f;
    first = static_cast<int64_t>(f) - 1;
    n = 4;
    cubic_weights(t, taps.weight);
    cubic_weight_derivatives(t, taps.dweight);
  }
  for (int k = 0; k < n; ++k) {
    const int64_t i = first + k;
    const bool inside = i >= 0 && i < size;
    if (!inside && padding == Padding::Zeros) {
      taps.weight[k] = 0.0;
      taps.dweight[k] = 0.0;
    }
    taps.index[k] = clamp_index(i, size);
  }
}

// Integer boxes whose extent equals the output size sample integer positions x1 + j under
// both align_corners settings, so every mode reduces to a plain copy. Positions must also
// fall inside the image for the copy to need no padding.
GFK_HOST_DEVICE bool is_exact_copy(double lo, double hi, int64_t out, int64_t size) {
  return lo == floor(lo) && hi - lo == static_cast<double>(out) && lo >= 0.0 &&
         hi <= static_cast<double>(size);
}

}  // namespace gfkernels
