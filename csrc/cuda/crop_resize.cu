// crop_resize on CUDA: the three ops' entry points (checks, launch shapes, dtype dispatch) and
// their registration. The kernels are in crop_resize/, one header per algorithm:
//   common.cuh           the arguments every kernel reads, the taps of a run-time mode
//   forward.cuh          the forward (interpolation, and the copy path of integer boxes)
//   backward_images.cuh  backward wrt images: atomics, or a deterministic gather when
//                        torch.use_deterministic_algorithms(True)
//   backward_boxes.cuh   backward wrt boxes (block reductions)
// They are headers of this one translation unit, not translation units of their own: each
// costs minutes of build (csrc/build.cfg keeps the list of .cpp/.cu files short).
//
// Includes stay clear of ATen/cuda/CUDAContext.h, which needs the cuSPARSE/cuBLAS headers
// (not every toolkit install has them); c10::cuda::getCurrentCUDAStream is the same stream
// as at::cuda::getCurrentCUDAStream.
//
// No host syncs: arguments are checked without reading values (check_values=false); positions
// are clamped to [-4, size + 4] by make_taps (NaN -> -4), which changes no result (every tap
// is outside the image there either way, as in gfkernels.reference) and keeps every index
// inside the image; batch_index values trip a device assert and are clamped, in every kernel.
// Pixel indices are 32-bit: outputs of more than kMaxPixels pixels per box are refused.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "../ops/crop_resize.h"
#include "crop_resize/backward_boxes.cuh"
#include "crop_resize/backward_images.cuh"
#include "crop_resize/common.cuh"
#include "crop_resize/forward.cuh"

namespace gfkernels {
namespace {

constexpr int64_t kMaxGridY = 65535;  // gridDim.y's limit: boxes beyond it loop

void check_sizes(int64_t h, int64_t w) {
  TORCH_CHECK_VALUE(h * w <= kMaxPixels, "crop_resize: output size (", h, ", ", w,
                    ") is too large for the CUDA kernels (h * w must be at most ", kMaxPixels,
                    ")");
}

void check_images_exist(int64_t N) {
  TORCH_CHECK_INDEX(N > 0, "crop_resize: batch_index values must lie in [0, N) with N = 0 "
                    "images");
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <Mode MODE, typename in_t, typename out_t, typename acc_t>
void launch_forward(const at::Tensor& images, const Boxes& boxes, const BatchIndex& batch_index,
                    at::Tensor& out, int64_t B, int h, int w, Padding padding,
                    bool align_corners, const Affine<acc_t>& affine, cudaStream_t stream) {
  const OutputLayout o{static_cast<int>(out.stride(1)), static_cast<int>(out.stride(2)),
                       static_cast<int>(out.stride(3))};
  constexpr int P = kPixels;
  const int groups_per_row = (w + P - 1) / P;
  // Threads a box needs: the copy path's (a group of P pixels of a row each) or the
  // interpolating path's (a column of P rows each, rows rounded up to whole warps), whichever
  // is more (which path a box takes is known on the device only).
  const int64_t groups = std::max(static_cast<int64_t>(h) * groups_per_row,
                                  (static_cast<int64_t>(h) + P - 1) / P * ((w + 31) / 32 * 32));
  // Small outputs: one block of just enough warps per box.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (groups + 31) / 32 * 32));
  const int64_t blocks_per_box = (groups + threads - 1) / threads;
  TORCH_CHECK_VALUE(B * blocks_per_box <= INT_MAX, "crop_resize: ", B, " boxes of ", h, " x ", w,
                    " pixels are too many for one launch of the CUDA kernel");
  forward_kernel<MODE, in_t, out_t, acc_t>
      <<<static_cast<unsigned>(B * blocks_per_box), threads, 0, stream>>>(
          images.const_data_ptr<in_t>(), boxes, batch_index, out.mutable_data_ptr<out_t>(),
          image_layout(images, h, w), o, h, w, groups_per_row, static_cast<int>(blocks_per_box),
          padding, align_corners, affine);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor crop_resize_cuda(const at::Tensor& images, const at::Tensor& boxes,
                            const std::optional<at::Tensor>& batch_index, at::IntArrayRef size,
                            c10::string_view mode_name, bool align_corners,
                            c10::string_view padding_name,
                            std::optional<c10::ArrayRef<double>> mean,
                            std::optional<c10::ArrayRef<double>> std, at::ScalarType out_dtype,
                            bool channels_last) {
  c10::cuda::CUDAGuard guard(images.device());
  const CropResizeCall call = prepare_crop_resize(images, boxes, batch_index, size, mode_name,
                                                  align_corners, padding_name, mean, std,
                                                  out_dtype, /*check_values=*/false);
  const int64_t h = size[0], w = size[1], B = boxes.size(0);
  check_sizes(h, w);
  at::Tensor out = at::empty({B, images.size(1), h, w}, images.options().dtype(out_dtype),
                             output_format(channels_last));
  if (out.numel() == 0) return out;
  check_images_exist(images.size(0));
  const Boxes box_arg = boxes_arg(boxes);
  const BatchIndex index_arg = batch_index_arg(batch_index, images.size(0));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GFK_DISPATCH_IMAGE_TYPES(images.scalar_type(), "crop_resize_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "crop_resize_cuda_out",
                                    [&] {
      using out_t = scalar_t;
      using acc_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>,
                                       double, float>;
      const AffineArg<acc_t> affine(call.affine, images.device());
      with_mode(call.mode, [&](auto mode) {
        launch_forward<decltype(mode)::value, in_t, out_t, acc_t>(
            images, box_arg, index_arg, out, B, static_cast<int>(h), static_cast<int>(w),
            call.padding, align_corners, affine.value, stream);
      });
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// Backward wrt images
// ---------------------------------------------------------------------------------------

dim3 pixel_block(int64_t hw) {
  // Small outputs: one block of just enough warps per box.
  const int64_t t = std::min<int64_t>(kThreads, ((hw + 31) / 32) * 32);
  return dim3(static_cast<unsigned>(t));
}

dim3 pixel_grid(int64_t hw, int64_t B, const dim3& block) {
  return dim3(static_cast<unsigned>((hw + block.x - 1) / block.x),
              static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(B, 1), kMaxGridY)));
}

unsigned blocks_for(int64_t n) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{sms} * 32)));
}

template <typename acc_t>
void backward_images_deterministic(const at::Tensor& grad, const Boxes& boxes,
                                   const std::optional<at::Tensor>& batch_index,
                                   at::Tensor& grad_images, Mode mode, Padding padding,
                                   bool align_corners, const Affine<acc_t>& affine) {
  const int64_t B = grad.size(0), C = grad.size(1), h = grad.size(2), w = grad.size(3);
  const int64_t N = grad_images.size(0), H = grad_images.size(2), W = grad_images.size(3);
  TORCH_CHECK_VALUE(H <= INT_MAX && W <= INT_MAX, "crop_resize: image too large");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto iopt = grad.options().dtype(at::kInt);
  const auto aopt = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor yindex = at::empty({B, h, kMaxTaps}, iopt), xindex = at::empty({B, w, kMaxTaps}, iopt);
  at::Tensor yweight = at::empty({B, h, kMaxTaps}, aopt), xweight = at::empty({B, w, kMaxTaps}, aopt);
  at::Tensor yspan = at::empty({B, h, 2}, iopt), xspan = at::empty({B, w, 2}, iopt);
  at::Tensor yrange = at::empty({B, H, 2}, iopt), xrange = at::empty({B, W, 2}, iopt);
  axis_table_kernel<acc_t><<<blocks_for(B * h), kThreads, 0, stream>>>(
      boxes, B, 1, 3, h, H, mode, padding, align_corners, yindex.mutable_data_ptr<int>(),
      yweight.mutable_data_ptr<acc_t>(), yspan.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  axis_table_kernel<acc_t><<<blocks_for(B * w), kThreads, 0, stream>>>(
      boxes, B, 0, 2, w, W, mode, padding, align_corners, xindex.mutable_data_ptr<int>(),
      xweight.mutable_data_ptr<acc_t>(), xspan.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  axis_range_kernel<<<blocks_for(B * H), kThreads, 0, stream>>>(
      boxes, B, 1, 3, h, H, align_corners, yspan.const_data_ptr<int>(), yrange.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  axis_range_kernel<<<blocks_for(B * W), kThreads, 0, stream>>>(
      boxes, B, 0, 2, w, W, align_corners, xspan.const_data_ptr<int>(), xrange.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor order, offsets;
  if (batch_index.has_value()) {
    auto sorted = at::sort(*batch_index, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor values = std::get<0>(sorted).contiguous();
    order = std::get<1>(sorted).contiguous();
    offsets = at::empty({N + 1}, values.options());
    image_offsets_kernel<<<static_cast<unsigned>((N + 1 + kThreads - 1) / kThreads), kThreads, 0,
                           stream>>>(values.const_data_ptr<int64_t>(), B, N,
                                     offsets.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  backward_images_gather_kernel<acc_t><<<blocks_for(grad_images.numel()), kThreads, 0, stream>>>(
      any_float(grad), order.defined() ? order.const_data_ptr<int64_t>() : nullptr,
      offsets.defined() ? offsets.const_data_ptr<int64_t>() : nullptr, N, C, H, W,
      static_cast<int>(h), static_cast<int>(w), yindex.const_data_ptr<int>(),
      yweight.const_data_ptr<acc_t>(), yrange.const_data_ptr<int>(), xindex.const_data_ptr<int>(),
      xweight.const_data_ptr<acc_t>(), xrange.const_data_ptr<int>(),
      grad_images.mutable_data_ptr<acc_t>(), affine);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor crop_resize_backward_images_cuda(const at::Tensor& grad_in, const at::Tensor& boxes,
                                            const std::optional<at::Tensor>& batch_index,
                                            at::IntArrayRef image_size, at::ScalarType image_dtype,
                                            c10::string_view mode_name, bool align_corners,
                                            c10::string_view padding_name,
                                            std::optional<c10::ArrayRef<double>> std) {
  c10::cuda::CUDAGuard guard(grad_in.device());
  const BackwardImagesCall call =
      prepare_backward_images(grad_in, boxes, batch_index, image_size, image_dtype, mode_name,
                              align_corners, padding_name, std, /*check_values=*/false);
  const int64_t h = grad_in.size(2), w = grad_in.size(3);
  check_sizes(h, w);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto acc_options = grad_in.options().dtype(call.acc_dtype);
  at::Tensor grad_images = deterministic ? at::empty(image_size, acc_options)
                                         : at::zeros(image_size, acc_options);
  if (grad_images.numel() == 0) return grad_images.to(image_dtype);
  if (grad_in.numel() == 0) return grad_images.zero_().to(image_dtype);
  // The backward kernels index grad as contiguous: a channels_last one is reordered here.
  const at::Tensor grad = grad_in.contiguous();
  const Boxes box_arg = boxes_arg(boxes);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto run = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    const AffineArg<acc_t> affine(call.affine, grad.device());
    if (deterministic) {
      backward_images_deterministic<acc_t>(grad, box_arg, batch_index, grad_images, call.mode,
                                           call.padding, align_corners, affine.value);
      return;
    }
    Geometry g{image_size[0], image_size[1], image_size[2], image_size[3], 0, 0, 0, 0};
    const int64_t B = grad.size(0);
    const dim3 block = pixel_block(h * w), grid = pixel_grid(h * w, B, block);
    backward_images_atomic_kernel<acc_t><<<grid, block, 0, stream>>>(
        any_float(grad), box_arg, batch_index_arg(batch_index, image_size[0]),
        grad_images.mutable_data_ptr<acc_t>(), g, B, static_cast<int>(h), static_cast<int>(w),
        call.mode, call.padding, align_corners, affine.value);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (call.acc_dtype == at::kDouble) run(double{}); else run(float{});
  return grad_images.to(image_dtype);
}

// ---------------------------------------------------------------------------------------
// Backward wrt boxes
// ---------------------------------------------------------------------------------------

at::Tensor crop_resize_backward_boxes_cuda(const at::Tensor& grad_in, const at::Tensor& images,
                                           const at::Tensor& boxes,
                                           const std::optional<at::Tensor>& batch_index,
                                           c10::string_view mode_name, bool align_corners,
                                           c10::string_view padding_name,
                                           std::optional<c10::ArrayRef<double>> std) {
  c10::cuda::CUDAGuard guard(images.device());
  const BackwardBoxesCall call =
      prepare_backward_boxes(grad_in, images, boxes, batch_index, mode_name, align_corners,
                             padding_name, std, /*check_values=*/false);
  const int64_t h = grad_in.size(2), w = grad_in.size(3), B = boxes.size(0);
  check_sizes(h, w);
  if (grad_in.numel() == 0) return at::zeros_like(boxes, at::MemoryFormat::Contiguous);
  check_images_exist(images.size(0));
  const at::Tensor grad = grad_in.contiguous();  // as above: indexed as contiguous
  const AffineArg<double> affine(call.affine, images.device());
  const Geometry g = geometry_of(images);
  const int64_t hw = h * w;
  // Enough blocks per box to fill the GPU when boxes are few, few partials when they are many.
  const int64_t per_block = kThreads * 4;
  const int64_t S = std::max<int64_t>(
      1, std::min<int64_t>({(hw + per_block - 1) / per_block, 64,
                            std::max<int64_t>(1, 1024 / std::max<int64_t>(B, 1))}));
  at::Tensor partial = at::empty({B, S, kBoxSums}, grad.options().dtype(at::kDouble));
  const dim3 block(kThreads), grid(static_cast<unsigned>(S),
                                   static_cast<unsigned>(std::min<int64_t>(B, kMaxGridY)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GFK_DISPATCH_IMAGE_TYPES(images.scalar_type(), "crop_resize_backward_boxes_cuda", [&] {
    backward_boxes_kernel<scalar_t><<<grid, block, 0, stream>>>(
        any_float(grad), images.const_data_ptr<scalar_t>(), boxes_arg(boxes),
        batch_index_arg(batch_index, images.size(0)), g, B, static_cast<int>(h),
        static_cast<int>(w), call.mode, call.padding, align_corners, affine.value,
        partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial.sum(1).to(boxes.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(gfkernels, CUDA, m) {
  m.impl("crop_resize", &crop_resize_cuda);
  m.impl("crop_resize_backward_images", &crop_resize_backward_images_cuda);
  m.impl("crop_resize_backward_boxes", &crop_resize_backward_boxes_cuda);
}

}  // namespace gfkernels
