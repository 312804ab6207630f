// crop_resize's contract, shared by its CPU and CUDA kernels: argument parsing and checks (one
// set of messages and exception types for every backend), the per-channel affine map, the
// image geometry, the image dtype dispatch, and the entry preamble of each of its three ops.
// The schemas and definitions are in crop_resize.cpp; the sampling maths is in ../sampling.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "../sampling.h"

namespace gfkernels {

// The image dtypes crop_resize reads: float16, bfloat16, float32, float64 and uint8.
#define GFK_DISPATCH_IMAGE_TYPES(TYPE, NAME, ...)                                            \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                             \
                     AT_DISPATCH_CASE_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kByte, __VA_ARGS__))

// fn(std::integral_constant<Mode, mode>{}): the mode as a compile-time constant, for kernels
// that take it (or its taps_of) as a template argument.
template <typename Fn>
void with_mode(Mode mode, Fn&& fn) {
  switch (mode) {
    case Mode::Nearest: return fn(std::integral_constant<Mode, Mode::Nearest>{});
    case Mode::Bilinear: return fn(std::integral_constant<Mode, Mode::Bilinear>{});
    case Mode::Bicubic: return fn(std::integral_constant<Mode, Mode::Bicubic>{});
  }
}

// Sizes and strides (in elements) of an (N, C, H, W) image batch.
struct Geometry {
  int64_t N, C, H, W;
  int64_t sN, sC, sH, sW;
};

inline Geometry geometry_of(const at::Tensor& images) {
  return {images.size(0),   images.size(1),   images.size(2),   images.size(3),
          images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
}

// The forward's output layout: contiguous (B, C, h, w), or channels_last (the channels of a
// pixel adjacent), which is what oneDNN and cuDNN convolutions run fastest on.
inline at::MemoryFormat output_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Per-channel affine map applied to every sampled value v: out = v * scale[c] + shift[c],
// i.e. (v / 255 - mean) / std for uint8 images and (v - mean) / std otherwise.
struct ChannelAffine {
  std::vector<double> scale, shift;
};

using OptionalDoubles = std::optional<c10::ArrayRef<double>>;

// `check_values` below: also read tensor values (finite boxes, batch_index range). The CPU
// kernels do; the CUDA kernels pass false to stay free of host syncs and rely on clamped taps
// (sampling.h) and device asserts to stay in bounds.

// crop_resize(images, boxes, batch_index, size, mode, ...), checked. Each kernel allocates the
// output, a (B, C, h, w) tensor of out_dtype in output_format(channels_last), after its own checks (the
// CUDA one refuses outputs too large for its 32-bit indices before allocating anything).
struct CropResizeCall {
  Mode mode;
  Padding padding;
  ChannelAffine affine;
};
CropResizeCall prepare_crop_resize(const at::Tensor& images, const at::Tensor& boxes,
                                   const std::optional<at::Tensor>& batch_index,
                                   at::IntArrayRef size, c10::string_view mode,
                                   bool align_corners, c10::string_view padding_mode,
                                   const OptionalDoubles& mean, const OptionalDoubles& std,
                                   at::ScalarType out_dtype, bool check_values);

// crop_resize_backward_images(grad, boxes, batch_index, image_size, image_dtype, ...): the
// gradient is accumulated in acc_dtype (float64 for float64 images, else float32) and cast to
// image_dtype at the end; the affine map holds 1 / std.
struct BackwardImagesCall {
  Mode mode;
  Padding padding;
  ChannelAffine affine;
  at::ScalarType acc_dtype;
};
BackwardImagesCall prepare_backward_images(const at::Tensor& grad, const at::Tensor& boxes,
                                           const std::optional<at::Tensor>& batch_index,
                                           at::IntArrayRef image_size,
                                           at::ScalarType image_dtype, c10::string_view mode,
                                           bool align_corners, c10::string_view padding_mode,
                                           const OptionalDoubles& std, bool check_values);

// crop_resize_backward_boxes(grad, images, boxes, batch_index, ...); the affine map holds the
// value scale (1 / 255 for uint8) over std.
struct BackwardBoxesCall {
  Mode mode;
  Padding padding;
  ChannelAffine affine;
};
BackwardBoxesCall prepare_backward_boxes(const at::Tensor& grad, const at::Tensor& images,
                                         const at::Tensor& boxes,
                                         const std::optional<at::Tensor>& batch_index,
                                         c10::string_view mode, bool align_corners,
                                         c10::string_view padding_mode,
                                         const OptionalDoubles& std, bool check_values);

}  // namespace gfkernels
