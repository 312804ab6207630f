// The extension's front: op schemas (TORCH_LIBRARY), the argument checks every backend
// shares, and the Python module gfkernels._C (build information). Kernels live in cpu/ and
// cuda/ and register themselves for their dispatch keys; fake kernels and autograd are
// registered from Python (gfkernels/ops.py).
#include <Python.h>
#include <pybind11/pybind11.h>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "crop_resize.h"

#ifndef GFK_CUDA_ARCH_LIST
#define GFK_CUDA_ARCH_LIST ""
#endif

namespace gfkernels {

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

void check_out_dtype(at::ScalarType out_dtype) {
  TORCH_CHECK_TYPE(at::isFloatingType(out_dtype) && out_dtype != at::kFloat8_e4m3fn &&
                       out_dtype != at::kFloat8_e5m2,
                   "crop_resize: out_dtype must be float16, bfloat16, float32 or float64, got ",
                   out_dtype);
}

static void check_per_channel(const std::optional<c10::ArrayRef<double>>& values,
                              const char* name, int64_t channels, bool nonzero) {
  if (!values.has_value()) return;
  TORCH_CHECK_VALUE(static_cast<int64_t>(values->size()) == channels || values->size() == 1,
                    "crop_resize: ", name, " must hold 1 or C = ", channels,
                    " values (one per channel), got ", values->size());
  for (const double v : *values) {
    TORCH_CHECK_VALUE(std::isfinite(v), "crop_resize: ", name, " must be finite, got ", v);
    TORCH_CHECK_VALUE(!nonzero || v != 0.0, "crop_resize: ", name, " must be non-zero");
  }
}

void check_crop_resize_args(const at::Tensor& images, const at::Tensor& boxes,
                            const std::optional<at::Tensor>& batch_index, int64_t out_h,
                            int64_t out_w, Mode mode, bool align_corners,
                            const std::optional<c10::ArrayRef<double>>& mean,
                            const std::optional<c10::ArrayRef<double>>& std, bool check_values) {
  TORCH_CHECK_VALUE(images.dim() == 4, "crop_resize: images must be 4-D (N, C, H, W), got ",
                    images.dim(), "-D of shape ", images.sizes());
  const at::ScalarType t = images.scalar_type();
  TORCH_CHECK_TYPE(t == at::kByte || t == at::kHalf || t == at::kBFloat16 || t == at::kFloat ||
                       t == at::kDouble,
                   "crop_resize: images must be uint8, float16, bfloat16, float32 or float64, got ",
                   t);
  TORCH_CHECK_VALUE(images.size(2) > 0 && images.size(3) > 0,
                    "crop_resize: images must have H > 0 and W > 0, got ", images.sizes());
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4,
                    "crop_resize: boxes must be (B, 4) as (x1, y1, x2, y2), got shape ",
                    boxes.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble,
                   "crop_resize: boxes must be float32 or float64, got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == images.device(), "crop_resize: boxes must be on the "
                    "images' device ", images.device(), ", got ", boxes.device());
  TORCH_CHECK_VALUE(out_h > 0 && out_w > 0, "crop_resize: size must be positive, got (", out_h,
                    ", ", out_w, ")");
  TORCH_CHECK_VALUE(!(mode == Mode::Nearest && align_corners),
                    "crop_resize: align_corners=True is not defined for mode='nearest' "
                    "(as in F.interpolate)");
  check_per_channel(mean, "mean", images.size(1), false);
  check_per_channel(std, "std", images.size(1), true);
  const int64_t B = boxes.size(0);
  if (batch_index.has_value()) {
    const at::Tensor& bi = *batch_index;
    TORCH_CHECK_TYPE(bi.scalar_type() == at::kLong, "crop_resize: batch_index must be int64, got ",
                     bi.scalar_type());
    TORCH_CHECK_VALUE(bi.dim() == 1 && bi.size(0) == B,
                      "crop_resize: batch_index must be (B,) with B = ", B,
                      " boxes, got shape ", bi.sizes());
    TORCH_CHECK_VALUE(bi.device() == images.device(), "crop_resize: batch_index must be on the "
                      "images' device ", images.device(), ", got ", bi.device());
    if (check_values && B > 0) {
      const int64_t lo = bi.min().item<int64_t>(), hi = bi.max().item<int64_t>();
      TORCH_CHECK_INDEX(lo >= 0 && hi < images.size(0), "crop_resize: batch_index values must "
                        "lie in [0, N) with N = ", images.size(0), ", got range [", lo, ", ", hi,
                        "]");
    }
  } else {
    TORCH_CHECK_VALUE(B == images.size(0), "crop_resize: without batch_index, boxes must hold "
                      "one box per image (B == N), got B = ", B, " and N = ", images.size(0));
  }
  if (check_values && B > 0) {
    TORCH_CHECK_VALUE(boxes.isfinite().all().item<bool>(),
                      "crop_resize: boxes must be finite (no NaN or inf)");
  }
}

ChannelAffine channel_affine(int64_t channels, bool uint8_input,
                             const std::optional<c10::ArrayRef<double>>& mean,
                             const std::optional<c10::ArrayRef<double>>& std) {
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

TORCH_LIBRARY(gfkernels, m) {
  // Outputs are always contiguous (B, C, h, w), whatever the images' layout.
  m.def(
      "crop_resize(Tensor images, Tensor boxes, Tensor? batch_index, int[] size, str mode, "
      "bool align_corners, str padding_mode, float[]? mean, float[]? std, "
      "ScalarType out_dtype) -> Tensor");
  m.def(
      "crop_resize_backward_images(Tensor grad, Tensor boxes, Tensor? batch_index, "
      "int[] image_size, ScalarType image_dtype, str mode, bool align_corners, "
      "str padding_mode, float[]? std) -> Tensor");
  m.def(
      "crop_resize_backward_boxes(Tensor grad, Tensor images, Tensor boxes, Tensor? batch_index, "
      "str mode, bool align_corners, str padding_mode, float[]? std) -> Tensor");
  // Early exit: threshold is a 0-dim floating tensor (on the CPU, or on the logits' device);
  // out_logits and exit_step are written in place. keep (n,) int64, num_keep 0-dim int64.
  m.def(
      "early_exit(Tensor logits, Tensor threshold, Tensor active, Tensor(a!) out_logits, "
      "Tensor(b!) exit_step, int step) -> (Tensor, Tensor)");
  // n is a host int (the caller read num_keep once): outputs are contiguous (n, ...).
  m.def("gather_rows(Tensor[] tensors, Tensor index, SymInt n) -> Tensor[]");
}

}  // namespace gfkernels

namespace py = pybind11;

PYBIND11_MODULE(_C, module) {
  module.doc() = "gfkernels compiled core: ops are registered under torch.ops.gfkernels";
#ifdef GFK_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
  module.attr("cuda_arch_list") = std::string(GFK_CUDA_ARCH_LIST);
}
