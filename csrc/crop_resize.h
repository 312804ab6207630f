// Argument checking and per-call constants of crop_resize, shared by the CPU and CUDA kernels
// so that every backend rejects the same bad input with the same message.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <vector>

#include "sampling.h"

namespace gfkernels {

Mode parse_mode(c10::string_view mode);
Padding parse_padding(c10::string_view padding_mode);

// Checks everything the kernels rely on (ranks, shapes, dtypes, devices, batch_index range,
// finite boxes when `check_values`), naming the offending argument in the message.
// `check_values` reads tensor values; CUDA callers pass false to stay free of host syncs and
// rely on the kernels' clamped taps (sampling.h) to stay in bounds.
void check_crop_resize_args(const at::Tensor& images, const at::Tensor& boxes,
                            const std::optional<at::Tensor>& batch_index, int64_t out_h,
                            int64_t out_w, Mode mode, bool align_corners,
                            const std::optional<c10::ArrayRef<double>>& mean,
                            const std::optional<c10::ArrayRef<double>>& std, bool check_values);

void check_out_dtype(at::ScalarType out_dtype);

// Per-channel affine map applied to every sampled value v: out = v * scale[c] + shift[c],
// i.e. (v / 255 - mean) / std for uint8 images and (v - mean) / std otherwise.
struct ChannelAffine {
  std::vector<double> scale, shift;
};
ChannelAffine channel_affine(int64_t channels, bool uint8_input,
                             const std::optional<c10::ArrayRef<double>>& mean,
                             const std::optional<c10::ArrayRef<double>>& std);

}  // namespace gfkernels
