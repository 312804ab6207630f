// crop_resize: the schemas of its three ops (forward, backward wrt images, backward wrt boxes)
// and the checks and entry preamble every kernel shares. Kernels live in ../cpu and ../cuda and
// register themselves per dispatch key; fake kernels and autograd are registered from Python
// (gfkernels/ops/crop_resize.py).
#include "crop_resize.h"

#include <torch/library.h>

#include <cmath>
#include <string>

namespace gfkernels {
namespace {

Mode parse_mode(c10::string_view mode) {
  if (mode == "bilinear") return Mode::Bilinear;
  if (mode == "bicubic") return Mode::Bicubic;
  if (mode == "nearest") return Mode::Nearest;
  TORCH_CHECK_VALUE(false, "crop_resize: mode must be 'bilinear', 'bicubic' or 'nearest', got '",
                    std::string(mode), "'");
}

Padding parse_padding(c10::string_view padding_mode) {
  if (padding_mode == "border") return Padding::Border;
  if (padding_mode == "zeros") return Padding::Zeros;
  TORCH_CHECK_VALUE(false, "crop_resize: padding_mode must be 'border' or 'zeros', got '",
                    std::string(padding_mode), "'");
}

// mode and padding_mode parsed, and the one combination F.interpolate leaves undefined refused.
std::pair<Mode, Padding> parse_options(c10::string_view mode_name, bool align_corners,
                                       c10::string_view padding_name) {
  const Mode mode = parse_mode(mode_name);
  TORCH_CHECK_VALUE(!(mode == Mode::Nearest && align_corners),
                    "crop_resize: align_corners=True is not defined for mode='nearest' "
                    "(as in F.interpolate)");
  return {mode, parse_padding(padding_name)};
}

void check_per_channel(const OptionalDoubles& values, const char* name, int64_t channels,
                       bool nonzero) {
  if (!values.has_value()) return;
  TORCH_CHECK_VALUE(static_cast<int64_t>(values->size()) == channels || values->size() == 1,
                    "crop_resize: ", name, " must hold 1 or C = ", channels,
                    " values (one per channel), got ", values->size());
  for (const double v : *values) {
    TORCH_CHECK_VALUE(std::isfinite(v), "crop_resize: ", name, " must be finite, got ", v);
    TORCH_CHECK_VALUE(!nonzero || v != 0.0, "crop_resize: ", name, " must be non-zero");
  }
}

// boxes (B, 4) float32/float64 on `device`; finite when check_values.
void check_boxes(const char* op, const at::Tensor& boxes, const at::Device& device,
                 const char* device_owner, bool check_values) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": boxes must be (B, 4) as (x1, y1, x2, y2), got shape ", boxes.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble, op,
                   ": boxes must be float32 or float64, got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == device, op, ": boxes must be on the ", device_owner,
                    " device ", device, ", got ", boxes.device());
  if (check_values && boxes.size(0) > 0) {
    TORCH_CHECK_VALUE(boxes.isfinite().all().item<bool>(), op,
                      ": boxes must be finite (no NaN or inf)");
  }
}

// batch_index (B,) int64 on `device` with values in [0, N) (read when check_values), or absent
// and then B == N.
void check_batch_index(const char* op, const std::optional<at::Tensor>& batch_index, int64_t B,
                       int64_t N, const at::Device& device, const char* device_owner,
                       bool check_values) {
  if (!batch_index.has_value()) {
    TORCH_CHECK_VALUE(B == N, op, ": without batch_index, boxes must hold one box per image "
                      "(B == N), got B = ", B, " and N = ", N);
    return;
  }
  const at::Tensor& bi = *batch_index;
  TORCH_CHECK_TYPE(bi.scalar_type() == at::kLong, op, ": batch_index must be int64, got ",
                   bi.scalar_type());
  TORCH_CHECK_VALUE(bi.dim() == 1 && bi.size(0) == B, op, ": batch_index must be (B,) with B = ",
                    B, " boxes, got shape ", bi.sizes());
  TORCH_CHECK_VALUE(bi.device() == device, op, ": batch_index must be on the ", device_owner,
                    " device ", device, ", got ", bi.device());
  if (check_values && B > 0) {
    const int64_t lo = bi.min().item<int64_t>(), hi = bi.max().item<int64_t>();
    TORCH_CHECK_INDEX(lo >= 0 && hi < N, op, ": batch_index values must lie in [0, N) with N = ",
                      N, ", got range [", lo, ", ", hi, "]");
  }
}

// images (N, C, H, W) of an image dtype with H, W > 0, and boxes / batch_index that fit them.
void check_images_boxes(const char* op, const at::Tensor& images, const at::Tensor& boxes,
                        const std::optional<at::Tensor>& batch_index, bool check_values) {
  TORCH_CHECK_VALUE(images.dim() == 4, op, ": images must be 4-D (N, C, H, W), got ",
                    images.dim(), "-D of shape ", images.sizes());
  const at::ScalarType t = images.scalar_type();
  TORCH_CHECK_TYPE(t == at::kByte || t == at::kHalf || t == at::kBFloat16 || t == at::kFloat ||
                       t == at::kDouble,
                   op, ": images must be uint8, float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK_VALUE(images.size(2) > 0 && images.size(3) > 0, op,
                    ": images must have H > 0 and W > 0, got ", images.sizes());
  check_boxes(op, boxes, images.device(), "images'", check_values);
  check_batch_index(op, batch_index, boxes.size(0), images.size(0), images.device(), "images'",
                    check_values);
}

ChannelAffine channel_affine(int64_t channels, bool uint8_input, const OptionalDoubles& mean,
                             const OptionalDoubles& std) {
  const double value_scale = uint8_input ? 1.0 / 255.0 : 1.0;
  ChannelAffine a;
  a.scale.assign(channels, value_scale);
  a.shift.assign(channels, 0.0);
  for (int64_t c = 0; c < channels; ++c) {
    const double m = mean.has_value() ? (*mean)[mean->size() == 1 ? 0 : c] : 0.0;
    const double s = std.has_value() ? (*std)[std->size() == 1 ? 0 : c] : 1.0;
    a.scale[c] = value_scale / s;
    a.shift[c] = -m / s;
  }
  return a;
}

}  // namespace

CropResizeCall prepare_crop_resize(const at::Tensor& images, const at::Tensor& boxes,
                                   const std::optional<at::Tensor>& batch_index,
                                   at::IntArrayRef size, c10::string_view mode_name,
                                   bool align_corners, c10::string_view padding_name,
                                   const OptionalDoubles& mean, const OptionalDoubles& std,
                                   at::ScalarType out_dtype, bool check_values) {
  constexpr const char* op = "crop_resize";
  TORCH_CHECK_VALUE(size.size() == 2, op, ": size must be (h, w), got ", size);
  TORCH_CHECK_VALUE(size[0] > 0 && size[1] > 0, op, ": size must be positive, got (", size[0],
                    ", ", size[1], ")");
  const auto [mode, padding] = parse_options(mode_name, align_corners, padding_name);
  check_images_boxes(op, images, boxes, batch_index, check_values);
  // The output limit (gfkernels/contract.py words it the same), before anything is allocated.
  // Compared in double: C * h * w of absurd sizes would overflow int64.
  const int64_t C = images.size(1);
  TORCH_CHECK_VALUE(static_cast<double>(C) * static_cast<double>(size[0]) *
                            static_cast<double>(size[1]) <=
                        static_cast<double>(kMaxOutputElementsPerBox),
                    op, ": size (", size[0], ", ", size[1], ") with C = ", C,
                    " channels is ", C * size[0] * size[1],
                    " output elements per box, over the limit of ", kMaxOutputElementsPerBox,
                    " (C * h * w)");
  check_per_channel(mean, "mean", images.size(1), false);
  check_per_channel(std, "std", images.size(1), true);
  TORCH_CHECK_TYPE(out_dtype == at::kHalf || out_dtype == at::kBFloat16 ||
                       out_dtype == at::kFloat || out_dtype == at::kDouble,
                   op, ": out_dtype must be float16, bfloat16, float32 or float64, got ",
                   out_dtype);
  return {mode, padding,
          channel_affine(images.size(1), images.scalar_type() == at::kByte, mean, std)};
}

BackwardImagesCall prepare_backward_images(const at::Tensor& grad, const at::Tensor& boxes,
                                           const std::optional<at::Tensor>& batch_index,
                                           at::IntArrayRef image_size,
                                           at::ScalarType image_dtype, c10::string_view mode_name,
                                           bool align_corners, c10::string_view padding_name,
                                           const OptionalDoubles& std, bool check_values) {
  constexpr const char* op = "crop_resize_backward_images";
  TORCH_CHECK_VALUE(image_size.size() == 4, op, ": image_size must be (N, C, H, W), got ",
                    image_size);
  TORCH_CHECK_VALUE(image_size[0] >= 0 && image_size[1] >= 0 && image_size[2] > 0 &&
                        image_size[3] > 0,
                    op, ": image_size must have N, C >= 0 and H, W > 0, got ", image_size);
  TORCH_CHECK_TYPE(image_dtype == at::kHalf || image_dtype == at::kBFloat16 ||
                       image_dtype == at::kFloat || image_dtype == at::kDouble,
                   op, ": images must be floating to have a gradient, got ", image_dtype);
  const auto [mode, padding] = parse_options(mode_name, align_corners, padding_name);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(1) == image_size[1], op,
                    ": grad must be (B, C, h, w) with C = ", image_size[1], ", got ",
                    grad.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": grad must be floating, got ",
                   grad.scalar_type());
  check_boxes(op, boxes, grad.device(), "grad's", check_values);
  TORCH_CHECK_VALUE(grad.size(0) == boxes.size(0), op, ": grad must hold B = ", boxes.size(0),
                    " crops (one per box), got ", grad.sizes());
  check_batch_index(op, batch_index, boxes.size(0), image_size[0], grad.device(), "grad's",
                    check_values);
  check_per_channel(std, "std", image_size[1], true);
  return {mode, padding, channel_affine(image_size[1], false, std::nullopt, std),
          image_dtype == at::kDouble ? at::kDouble : at::kFloat};
}

BackwardBoxesCall prepare_backward_boxes(const at::Tensor& grad, const at::Tensor& images,
                                         const at::Tensor& boxes,
                                         const std::optional<at::Tensor>& batch_index,
                                         c10::string_view mode_name, bool align_corners,
                                         c10::string_view padding_name,
                                         const OptionalDoubles& std, bool check_values) {
  constexpr const char* op = "crop_resize_backward_boxes";
  const auto [mode, padding] = parse_options(mode_name, align_corners, padding_name);
  check_images_boxes(op, images, boxes, batch_index, check_values);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == boxes.size(0) &&
                        grad.size(1) == images.size(1),
                    op, ": grad must be (B, C, h, w) with B = ", boxes.size(0), " and C = ",
                    images.size(1), ", got ", grad.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": grad must be floating, got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == images.device(), op, ": grad must be on the images' device ",
                    images.device(), ", got ", grad.device());
  check_per_channel(std, "std", images.size(1), true);
  return {mode, padding,
          channel_affine(images.size(1), images.scalar_type() == at::kByte, std::nullopt, std)};
}

TORCH_LIBRARY_FRAGMENT(gfkernels, m) {
  // Outputs are (B, C, h, w), contiguous or (channels_last) channels innermost, whatever the
  // images' layout: a channels_last network takes its patches as the kernel wrote them.
  m.def(
      "crop_resize(Tensor images, Tensor boxes, Tensor? batch_index, int[] size, str mode, "
      "bool align_corners, str padding_mode, float[]? mean, float[]? std, "
      "ScalarType out_dtype, bool channels_last=False) -> Tensor");
  m.def(
      "crop_resize_backward_images(Tensor grad, Tensor boxes, Tensor? batch_index, "
      "int[] image_size, ScalarType image_dtype, str mode, bool align_corners, "
      "str padding_mode, float[]? std) -> Tensor");
  m.def(
      "crop_resize_backward_boxes(Tensor grad, Tensor images, Tensor boxes, Tensor? batch_index, "
      "str mode, bool align_corners, str padding_mode, float[]? std) -> Tensor");
}

}  // namespace gfkernels
