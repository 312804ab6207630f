// What every crop_resize CUDA kernel reads: the arguments as they travel to the device (the
// affine map, the gradient of any float dtype, the boxes and batch_index as given) with their
// host-side builders, and the taps of a run-time mode. Part of the one translation unit
// csrc/cuda/crop_resize.cu (see there), like forward.cuh, backward_images.cuh and
// backward_boxes.cuh: included only there, so its definitions keep that file's internal
// linkage (the unnamed namespace) and the kernels their names.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstring>
#include <optional>

#include "../../ops/crop_resize.h"

namespace gfkernels {
namespace {

constexpr int kThreads = 256;
constexpr int kAffineSlots = 64;  // channels whose affine map travels in the kernel arguments
// Per-box output pixels: indices are int32 with room for a tile past the end.
constexpr int64_t kMaxPixels = kMaxOutputElementsPerBox;  // the ops' own limit (sampling.h)

// Per-channel affine map out = v * scale[c] + shift[c], in the accumulation type T. Up to
// kAffineSlots channels travel by value (read through __grid_constant__, no copy); more
// channels use a device table.
template <typename T>
struct Affine {
  T scale[kAffineSlots];
  T shift[kAffineSlots];
  const T* table;  // [scale(C), shift(C)] on the device, or nullptr
  int64_t channels;
  __device__ __forceinline__ T scale_of(int64_t c) const {
    return table != nullptr ? table[c] : scale[c];
  }
  __device__ __forceinline__ T shift_of(int64_t c) const {
    return table != nullptr ? table[channels + c] : shift[c];
  }
};

// Builds the Affine argument; keeps the device table (if any) alive while in scope.
template <typename T>
struct AffineArg {
  Affine<T> value;
  at::Tensor table;
  AffineArg(const ChannelAffine& a, const at::Device& device) {
    std::memset(&value, 0, sizeof(value));
    const int64_t C = static_cast<int64_t>(a.scale.size());
    value.channels = C;
    value.table = nullptr;
    if (C <= kAffineSlots) {
      for (int64_t c = 0; c < C; ++c) {
        value.scale[c] = static_cast<T>(a.scale[c]);
        value.shift[c] = static_cast<T>(a.shift[c]);
      }
    } else {
      // Pinned staging buffer: the copy is asynchronous (no host sync).
      const auto dtype = c10::CppTypeToScalarType<T>::value;
      at::Tensor host = at::empty({2 * C}, at::TensorOptions().dtype(dtype).pinned_memory(true));
      T* h = host.mutable_data_ptr<T>();
      for (int64_t c = 0; c < C; ++c) {
        h[c] = static_cast<T>(a.scale[c]);
        h[C + c] = static_cast<T>(a.shift[c]);
      }
      table = host.to(device, /*non_blocking=*/true);
      value.table = table.const_data_ptr<T>();
    }
  }
};

// A read-only pointer to float16/bfloat16/float32/float64 data whose type is known at run
// time only: the gradients' dtype then costs no extra template instantiations.
struct AnyFloat {
  const void* ptr;
  int kind;  // 0 float16, 1 bfloat16, 2 float32, 3 float64
  template <typename T>
  __device__ __forceinline__ T load(int64_t i) const {
    switch (kind) {
      case 0: return static_cast<T>(static_cast<float>(static_cast<const c10::Half*>(ptr)[i]));
      case 1: return static_cast<T>(static_cast<float>(static_cast<const c10::BFloat16*>(ptr)[i]));
      case 2: return static_cast<T>(static_cast<const float*>(ptr)[i]);
      default: return static_cast<T>(static_cast<const double*>(ptr)[i]);
    }
  }
};

AnyFloat any_float(const at::Tensor& t) {
  int kind;
  switch (t.scalar_type()) {
    case at::kHalf: kind = 0; break;
    case at::kBFloat16: kind = 1; break;
    case at::kFloat: kind = 2; break;
    case at::kDouble: kind = 3; break;
    default: TORCH_CHECK_TYPE(false, "crop_resize: grad must be floating, got ", t.scalar_type());
  }
  return {t.const_data_ptr(), kind};
}

struct Box {
  double x1, y1, x2, y2;
};

// The boxes as given (float32 or float64, any strides): read in place, converted to double.
struct Boxes {
  const void* ptr;
  int64_t s0, s1;
  bool f64;
  __device__ __forceinline__ double at(int64_t b, int k) const {
    const int64_t i = b * s0 + k * s1;
    return f64 ? static_cast<const double*>(ptr)[i]
               : static_cast<double>(static_cast<const float*>(ptr)[i]);
  }
  __device__ __forceinline__ Box load(int64_t b) const {
    return {at(b, 0), at(b, 1), at(b, 2), at(b, 3)};
  }
};

Boxes boxes_arg(const at::Tensor& boxes) {
  return {boxes.const_data_ptr(), boxes.stride(0), boxes.stride(1),
          boxes.scalar_type() == at::kDouble};
}

// batch_index as given (any stride), or absent (box b reads image b).
struct BatchIndex {
  const int64_t* ptr;
  int64_t stride;
  int64_t N;
  // The image box b reads: out-of-range values trip a device assert and are clamped, so
  // nothing is read out of bounds (the host ensures N >= 1).
  __device__ __forceinline__ int64_t image_of(int64_t b) const {
    if (ptr == nullptr) return b;
    const int64_t n = ptr[b * stride];
    CUDA_KERNEL_ASSERT_MSG(n >= 0 && n < N, "crop_resize: batch_index values must lie in [0, N)");
    return clamp_index(n, N);
  }
};

BatchIndex batch_index_arg(const std::optional<at::Tensor>& batch_index, int64_t N) {
  if (!batch_index.has_value()) return {nullptr, 0, N};
  return {batch_index->const_data_ptr<int64_t>(), batch_index->stride(0), N};
}

// make_taps with the mode as a compile-time constant in each branch (backward kernels, whose
// mode is a run-time argument), so that its loops unroll and the Taps arrays stay in registers.
__device__ __forceinline__ void device_taps(double x, int64_t size, Mode mode, Padding padding,
                                            Taps& t) {
  switch (mode) {
    case Mode::Nearest: make_taps(x, size, Mode::Nearest, padding, t); break;
    case Mode::Bilinear: make_taps(x, size, Mode::Bilinear, padding, t); break;
    default: make_taps(x, size, Mode::Bicubic, padding, t); break;
  }
}

}  // namespace
}  // namespace gfkernels
