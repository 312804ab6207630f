// crop_resize on the CPU: forward, backward wrt images, backward wrt boxes.
//
// The op is separable: an output pixel (i, j) reads rows iy[i][a] with weights wy[i][a] and
// columns ix[j][k] with weights wx[j][k]. Taps are computed once per output row and column
// (tables below); each output row is then a vertical pass (combine the few source rows it
// reads over the box's column span, a contiguous, vectorisable loop) followed by a short
// horizontal pass over the taps. Work is split over (box, output row) for the forward, over
// image planes for the backward wrt images (each thread owns its planes: deterministic, no
// atomics) and over boxes for the backward wrt boxes. Outputs are written, and incoming
// gradients read, through their strides: contiguous and channels_last alike, without copies.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <cstring>
#include <vector>

#include "../ops/crop_resize.h"

namespace gfkernels {
namespace {

// Taps of every output column (or row) of every box, stored flat: [box][out][tap].
template <typename acc_t>
struct AxisTable {
  int64_t out = 0, taps = 0;
  std::vector<int64_t> index;
  std::vector<acc_t> weight, dweight;
  std::vector<int64_t> lo, hi;  // per box: the span [lo, hi] of indices its taps read
  std::vector<uint8_t> exact;   // per box: this axis is an exact integer copy...
  std::vector<int64_t> start;   // ...starting at this index

  const int64_t* index_at(int64_t b, int64_t o) const { return &index[(b * out + o) * taps]; }
  const acc_t* weight_at(int64_t b, int64_t o) const { return &weight[(b * out + o) * taps]; }
  const acc_t* dweight_at(int64_t b, int64_t o) const { return &dweight[(b * out + o) * taps]; }
};

// Builds the taps along one axis; `lo_col`/`hi_col` pick the box coordinates of that axis.
template <typename acc_t, typename box_t>
AxisTable<acc_t> build_axis_table(const box_t* boxes, int64_t num_boxes, int lo_col, int hi_col,
                                  int64_t out, int64_t size, Mode mode, Padding padding,
                                  bool align_corners) {
  AxisTable<acc_t> t;
  t.out = out;
  t.taps = taps_of(mode);
  t.index.resize(num_boxes * out * t.taps);
  t.weight.resize(t.index.size());
  t.dweight.resize(t.index.size());
  t.lo.resize(num_boxes);
  t.hi.resize(num_boxes);
  t.exact.resize(num_boxes);
  t.start.resize(num_boxes);
  at::parallel_for(0, num_boxes, 16, [&](int64_t begin, int64_t end) {
    Taps taps;
    for (int64_t b = begin; b < end; ++b) {
      const double lo = static_cast<double>(boxes[b * 4 + lo_col]);
      const double hi = static_cast<double>(boxes[b * 4 + hi_col]);
      int64_t span_lo = size, span_hi = -1;
      for (int64_t o = 0; o < out; ++o) {
        make_taps(source_position(lo, hi, o, out, align_corners), size, mode, padding, taps);
        const int64_t base = (b * out + o) * t.taps;
        for (int64_t k = 0; k < t.taps; ++k) {
          t.index[base + k] = taps.index[k];
          t.weight[base + k] = static_cast<acc_t>(taps.weight[k]);
          t.dweight[base + k] = static_cast<acc_t>(taps.dweight[k]);
          span_lo = std::min(span_lo, taps.index[k]);
          span_hi = std::max(span_hi, taps.index[k]);
        }
      }
      t.lo[b] = span_lo;
      t.hi[b] = span_hi;
      t.exact[b] = is_exact_copy(lo, hi, out, size);
      t.start[b] = t.exact[b] ? static_cast<int64_t>(lo) : 0;
    }
  });
  return t;
}

// The column (x) and row (y) tables of every box for an h x w output from an H x W image.
template <typename acc_t>
std::pair<AxisTable<acc_t>, AxisTable<acc_t>> build_tables(const at::Tensor& boxes, int64_t h,
                                                           int64_t w, int64_t H, int64_t W,
                                                           Mode mode, Padding padding,
                                                           bool align_corners) {
  std::pair<AxisTable<acc_t>, AxisTable<acc_t>> xy;
  const int64_t B = boxes.size(0);
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "crop_resize_boxes", [&] {
    const scalar_t* bx = boxes.data_ptr<scalar_t>();
    xy.first = build_axis_table<acc_t>(bx, B, 0, 2, w, W, mode, padding, align_corners);
    xy.second = build_axis_table<acc_t>(bx, B, 1, 3, h, H, mode, padding, align_corners);
  });
  return xy;
}

// dst[x] = sum_a w[a] * src_a[x] over `len` columns: the vertical pass. Taps of weight 0
// (exact rows, zero padding) are skipped.
template <typename scalar_t, typename acc_t>
void combine_rows(const scalar_t* const* rows, const acc_t* w, int64_t taps, int64_t len,
                  int64_t stride, acc_t* __restrict dst) {
  bool first = true;
  for (int64_t a = 0; a < taps; ++a) {
    if (w[a] == acc_t(0)) continue;
    const scalar_t* __restrict src = rows[a];
    const acc_t wa = w[a];
    if (stride == 1) {
      if (first) {
        for (int64_t x = 0; x < len; ++x) dst[x] = wa * static_cast<acc_t>(src[x]);
      } else {
        for (int64_t x = 0; x < len; ++x) dst[x] += wa * static_cast<acc_t>(src[x]);
      }
    } else {
      if (first) {
        for (int64_t x = 0; x < len; ++x) dst[x] = wa * static_cast<acc_t>(src[x * stride]);
      } else {
        for (int64_t x = 0; x < len; ++x) dst[x] += wa * static_cast<acc_t>(src[x * stride]);
      }
    }
    first = false;
  }
  if (first) std::fill(dst, dst + len, acc_t(0));
}

constexpr int64_t kPrefetchRows = 4;

inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 1);
}

// dst[j * dst_stride] = src[j * stride] * scale + shift, the exact-copy path: a memcpy when
// nothing is converted, a vectorisable loop for contiguous rows, a strided loop otherwise.
template <typename image_t, typename out_t, typename acc_t>
void copy_row(const image_t* __restrict src, int64_t stride, int64_t len, acc_t scale,
              acc_t shift, out_t* __restrict dst, int64_t dst_stride) {
  if (dst_stride != 1) {
    for (int64_t j = 0; j < len; ++j)
      dst[j * dst_stride] =
          static_cast<out_t>(static_cast<acc_t>(src[j * stride]) * scale + shift);
  } else if (stride == 1) {
    if constexpr (std::is_same_v<image_t, out_t>) {
      if (scale == acc_t(1) && shift == acc_t(0)) {
        std::memcpy(dst, src, len * sizeof(out_t));
        return;
      }
    }
    for (int64_t j = 0; j < len; ++j)
      dst[j] = static_cast<out_t>(static_cast<acc_t>(src[j]) * scale + shift);
  } else {
    for (int64_t j = 0; j < len; ++j)
      dst[j] = static_cast<out_t>(static_cast<acc_t>(src[j * stride]) * scale + shift);
  }
}

// out[j] = sum_k w[j][k] * src[idx[j][k] - offset]: the horizontal pass.
template <int TAPS, typename acc_t>
inline acc_t horizontal_tap(const int64_t* idx, const acc_t* w, const acc_t* src, int64_t offset) {
  acc_t v = 0;
  for (int k = 0; k < TAPS; ++k) v += w[k] * src[idx[k] - offset];
  return v;
}

template <typename image_t, typename out_t, typename acc_t, int TAPS>
void forward_impl(const at::Tensor& images, const at::Tensor& boxes, const int64_t* batch_index,
                  at::Tensor& out, Mode mode, Padding padding, bool align_corners,
                  const ChannelAffine& affine) {
  const Geometry g = geometry_of(images);
  const int64_t B = boxes.size(0), h = out.size(2), w = out.size(3);
  const auto tables =
      build_tables<acc_t>(boxes, h, w, g.H, g.W, mode, padding, align_corners);
  const AxisTable<acc_t>& xt = tables.first;
  const AxisTable<acc_t>& yt = tables.second;
  const image_t* img = images.data_ptr<image_t>();
  out_t* dst = out.data_ptr<out_t>();
  const int64_t C = g.C;
  const int64_t oN = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);

  // One unit of work is one output row of one channel. Units run plane by plane (b, c, i),
  // so source rows and output rows are visited in address order; when the channels of one
  // row are adjacent in memory (channels_last images or output), units run (b, i, c) instead,
  // so that the channels of an output row are written one after the other.
  const bool channels_inner = (g.sC == 1 || oC == 1) && C > 1;
  at::parallel_for(0, B * C * h, std::max<int64_t>(1, 2048 / w), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(g.W);
    const image_t* rows[kMaxTaps];
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / (C * h);
      const int64_t c = channels_inner ? u % C : (u / h) % C;
      const int64_t i = channels_inner ? (u / C) % h : u % h;
      const int64_t n = batch_index ? batch_index[b] : b;
      const image_t* plane = img + n * g.sN + c * g.sC;
      out_t* o = dst + b * oN + c * oC + i * oH;
      const acc_t sc = static_cast<acc_t>(affine.scale[c]);
      const acc_t sh = static_cast<acc_t>(affine.shift[c]);
      if (xt.exact[b] && yt.exact[b]) {
        // Fast path: an integer box of the output's size is a row copy.
        const image_t* src = plane + (yt.start[b] + i) * g.sH + xt.start[b] * g.sW;
        if (!channels_inner && i + kPrefetchRows < h && g.sW == 1) {
          // Rows of a crop are short and far apart: ask for a later row's cache lines now
          // so that several rows are in flight (the hardware prefetcher sees one stream).
          prefetch_row(src + kPrefetchRows * g.sH, w * sizeof(image_t));
        }
        copy_row<image_t, out_t, acc_t>(src, g.sW, w, sc, sh, o, oW);
        continue;
      }
      const int64_t* iy = yt.index_at(b, i);
      const int64_t xlo = xt.lo[b], span = xt.hi[b] - xt.lo[b] + 1;
      for (int64_t a = 0; a < yt.taps; ++a) rows[a] = plane + iy[a] * g.sH + xlo * g.sW;
      combine_rows<image_t, acc_t>(rows, yt.weight_at(b, i), yt.taps, span, g.sW, row.data());
      for (int64_t j = 0; j < w; ++j) {
        const acc_t v = horizontal_tap<TAPS, acc_t>(xt.index_at(b, j), xt.weight_at(b, j),
                                                    row.data(), xlo);
        o[j * oW] = static_cast<out_t>(v * sc + sh);
      }
    }
  });
}

std::vector<int64_t> copy_batch_index(const std::optional<at::Tensor>& batch_index) {
  if (!batch_index.has_value()) return {};
  const at::Tensor bi = batch_index->contiguous();
  const int64_t* p = bi.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + bi.numel());
}

at::Tensor crop_resize_cpu(const at::Tensor& images, const at::Tensor& boxes_in,
                           const std::optional<at::Tensor>& batch_index, at::IntArrayRef size,
                           c10::string_view mode_name, bool align_corners,
                           c10::string_view padding_name,
                           std::optional<c10::ArrayRef<double>> mean,
                           std::optional<c10::ArrayRef<double>> std, at::ScalarType out_dtype,
                           bool channels_last) {
  const CropResizeCall call = prepare_crop_resize(images, boxes_in, batch_index, size, mode_name,
                                                  align_corners, padding_name, mean, std,
                                                  out_dtype, /*check_values=*/true);
  at::Tensor out = at::empty({boxes_in.size(0), images.size(1), size[0], size[1]},
                             images.options().dtype(out_dtype),
                             output_format(channels_last));
  if (out.numel() == 0) return out;
  const at::Tensor boxes = boxes_in.contiguous();
  const std::vector<int64_t> bi = copy_batch_index(batch_index);
  GFK_DISPATCH_IMAGE_TYPES(images.scalar_type(), "crop_resize_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "crop_resize_out", [&] {
      using out_t = scalar_t;
      // float64 in or out: accumulate in double; otherwise float.
      using acc_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>,
                                       double, float>;
      with_mode(call.mode, [&](auto mode) {
        forward_impl<in_t, out_t, acc_t, taps_of(decltype(mode)::value)>(
            images, boxes, bi.empty() ? nullptr : bi.data(), out, call.mode, call.padding,
            align_corners, call.affine);
      });
    });
  });
  return out;
}

// Groups boxes by the image they read, keeping box order inside a group, so the thread that
// owns an image plane visits its contributions in a fixed order (deterministic sums).
std::vector<std::vector<int64_t>> boxes_per_image(const std::vector<int64_t>& bi, int64_t B,
                                                  int64_t N) {
  std::vector<std::vector<int64_t>> groups(N);
  for (int64_t b = 0; b < B; ++b) groups[bi.empty() ? b : bi[b]].push_back(b);
  return groups;
}

template <typename grad_t, typename acc_t, int TAPS>
void backward_images_impl(const at::Tensor& grad, const at::Tensor& boxes,
                          const std::vector<int64_t>& bi, at::Tensor& grad_images, Mode mode,
                          Padding padding, bool align_corners, const ChannelAffine& affine) {
  const int64_t B = grad.size(0), C = grad.size(1), h = grad.size(2), w = grad.size(3);
  const int64_t N = grad_images.size(0), H = grad_images.size(2), W = grad_images.size(3);
  const auto tables =
      build_tables<acc_t>(boxes, h, w, H, W, mode, padding, align_corners);
  const AxisTable<acc_t>& xt = tables.first;
  const AxisTable<acc_t>& yt = tables.second;
  const auto groups = boxes_per_image(bi, B, N);
  const grad_t* g = grad.data_ptr<grad_t>();
  const int64_t gN = grad.stride(0), gC = grad.stride(1), gH = grad.stride(2), gW = grad.stride(3);
  acc_t* gi = grad_images.data_ptr<acc_t>();

  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(W);
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      acc_t* plane = gi + nc * H * W;
      std::fill(plane, plane + H * W, acc_t(0));
      const acc_t sc = static_cast<acc_t>(affine.scale[c]);
      for (const int64_t b : groups[n]) {
        const int64_t xlo = xt.lo[b], span = xt.hi[b] - xt.lo[b] + 1;
        for (int64_t i = 0; i < h; ++i) {
          const grad_t* go = g + b * gN + c * gC + i * gH;
          // Transposed horizontal pass: spread the output row over the column span.
          std::fill(row.begin(), row.begin() + span, acc_t(0));
          for (int64_t j = 0; j < w; ++j) {
            const acc_t v = static_cast<acc_t>(go[j * gW]) * sc;
            const int64_t* ix = xt.index_at(b, j);
            const acc_t* wx = xt.weight_at(b, j);
            for (int k = 0; k < TAPS; ++k) row[ix[k] - xlo] += wx[k] * v;
          }
          // Transposed vertical pass.
          const int64_t* iy = yt.index_at(b, i);
          const acc_t* wy = yt.weight_at(b, i);
          for (int64_t a = 0; a < yt.taps; ++a) {
            if (wy[a] == acc_t(0)) continue;
            acc_t* __restrict dst = plane + iy[a] * W + xlo;
            const acc_t wa = wy[a];
            for (int64_t x = 0; x < span; ++x) dst[x] += wa * row[x];
          }
        }
      }
    }
  });
}

at::Tensor crop_resize_backward_images_cpu(const at::Tensor& grad, const at::Tensor& boxes_in,
                                           const std::optional<at::Tensor>& batch_index,
                                           at::IntArrayRef image_size, at::ScalarType image_dtype,
                                           c10::string_view mode_name, bool align_corners,
                                           c10::string_view padding_name,
                                           std::optional<c10::ArrayRef<double>> std) {
  const BackwardImagesCall call =
      prepare_backward_images(grad, boxes_in, batch_index, image_size, image_dtype, mode_name,
                              align_corners, padding_name, std, /*check_values=*/true);
  const at::Tensor boxes = boxes_in.contiguous();
  const std::vector<int64_t> bi = copy_batch_index(batch_index);
  // Each thread zeroes the planes it owns right before accumulating into them (first touch
  // on the thread that uses the memory, and the clearing is parallel too).
  at::Tensor grad_images = at::empty(image_size, grad.options().dtype(call.acc_dtype));
  if (grad.numel() == 0) return grad_images.zero_().to(image_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "crop_resize_backward_images_cpu", [&] {
    using grad_t = scalar_t;
    auto run = [&](auto acc_tag) {
      using acc_t = decltype(acc_tag);
      with_mode(call.mode, [&](auto mode) {
        backward_images_impl<grad_t, acc_t, taps_of(decltype(mode)::value)>(
            grad, boxes, bi, grad_images, call.mode, call.padding, align_corners, call.affine);
      });
    };
    if (call.acc_dtype == at::kDouble) run(double{}); else run(float{});
  });
  return grad_images.to(image_dtype);
}

template <typename image_t, typename grad_t, typename acc_t, int TAPS>
void backward_boxes_impl(const at::Tensor& grad, const at::Tensor& images, const at::Tensor& boxes,
                         const std::vector<int64_t>& bi, at::Tensor& grad_boxes, Mode mode,
                         Padding padding, bool align_corners, const ChannelAffine& affine) {
  const Geometry geo = geometry_of(images);
  const int64_t B = grad.size(0), C = grad.size(1), h = grad.size(2), w = grad.size(3);
  const auto tables =
      build_tables<acc_t>(boxes, h, w, geo.H, geo.W, mode, padding, align_corners);
  const AxisTable<acc_t>& xt = tables.first;
  const AxisTable<acc_t>& yt = tables.second;
  const image_t* img = images.data_ptr<image_t>();
  const grad_t* g = grad.data_ptr<grad_t>();
  const int64_t gN = grad.stride(0), gC = grad.stride(1), gH = grad.stride(2), gW = grad.stride(3);
  std::vector<double> result(B * 4);

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> value_row(geo.W), slope_row(geo.W);
    std::vector<double> gx(w), gy(h);
    const image_t* rows[kMaxTaps];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = bi.empty() ? b : bi[b];
      const int64_t xlo = xt.lo[b], span = xt.hi[b] - xt.lo[b] + 1;
      std::fill(gx.begin(), gx.end(), 0.0);
      std::fill(gy.begin(), gy.end(), 0.0);
      for (int64_t c = 0; c < C; ++c) {
        const image_t* plane = img + n * geo.sN + c * geo.sC;
        const acc_t sc = static_cast<acc_t>(affine.scale[c]);
        for (int64_t i = 0; i < h; ++i) {
          const int64_t* iy = yt.index_at(b, i);
          for (int64_t a = 0; a < yt.taps; ++a) rows[a] = plane + iy[a] * geo.sH + xlo * geo.sW;
          // value_row: the sampled row; slope_row: its derivative wrt the row position.
          combine_rows<image_t, acc_t>(rows, yt.weight_at(b, i), yt.taps, span, geo.sW,
                                        value_row.data());
          combine_rows<image_t, acc_t>(rows, yt.dweight_at(b, i), yt.taps, span, geo.sW,
                                        slope_row.data());
          const grad_t* go = g + b * gN + c * gC + i * gH;
          double row_sum = 0.0;
          for (int64_t j = 0; j < w; ++j) {
            const acc_t gv = static_cast<acc_t>(go[j * gW]) * sc;
            if (gv == acc_t(0)) continue;
            const int64_t* ix = xt.index_at(b, j);
            gx[j] += static_cast<double>(
                gv * horizontal_tap<TAPS, acc_t>(ix, xt.dweight_at(b, j), value_row.data(), xlo));
            row_sum += static_cast<double>(
                gv * horizontal_tap<TAPS, acc_t>(ix, xt.weight_at(b, j), slope_row.data(), xlo));
          }
          gy[i] += row_sum;
        }
      }
      // Chain rule through the (affine) map from box coordinates to sample positions.
      double dx1 = 0, dx2 = 0, dy1 = 0, dy2 = 0;
      for (int64_t j = 0; j < w; ++j) {
        const double f = source_position_dhi(j, w, align_corners);
        dx1 += gx[j] * (1.0 - f);
        dx2 += gx[j] * f;
      }
      for (int64_t i = 0; i < h; ++i) {
        const double f = source_position_dhi(i, h, align_corners);
        dy1 += gy[i] * (1.0 - f);
        dy2 += gy[i] * f;
      }
      result[b * 4 + 0] = dx1;
      result[b * 4 + 1] = dy1;
      result[b * 4 + 2] = dx2;
      result[b * 4 + 3] = dy2;
    }
  });
  AT_DISPATCH_FLOATING_TYPES(grad_boxes.scalar_type(), "crop_resize_grad_boxes", [&] {
    scalar_t* gb = grad_boxes.data_ptr<scalar_t>();
    for (int64_t k = 0; k < B * 4; ++k) gb[k] = static_cast<scalar_t>(result[k]);
  });
}

at::Tensor crop_resize_backward_boxes_cpu(const at::Tensor& grad, const at::Tensor& images,
                                          const at::Tensor& boxes_in,
                                          const std::optional<at::Tensor>& batch_index,
                                          c10::string_view mode_name, bool align_corners,
                                          c10::string_view padding_name,
                                          std::optional<c10::ArrayRef<double>> std) {
  const BackwardBoxesCall call =
      prepare_backward_boxes(grad, images, boxes_in, batch_index, mode_name, align_corners,
                             padding_name, std, /*check_values=*/true);
  const at::Tensor boxes = boxes_in.contiguous();
  const std::vector<int64_t> bi = copy_batch_index(batch_index);
  at::Tensor grad_boxes = at::zeros_like(boxes, at::MemoryFormat::Contiguous);
  if (grad.numel() == 0) return grad_boxes;
  GFK_DISPATCH_IMAGE_TYPES(images.scalar_type(), "crop_resize_backward_boxes_cpu", [&] {
    using in_t = scalar_t;
    // Box gradients sum many products of (value differences x gradients); accumulate them in
    // double whatever the image dtype, as the reference does, so float32 stays tight.
    using acc_t = double;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "crop_resize_backward_boxes_grad", [&] {
      using grad_t = scalar_t;
      with_mode(call.mode, [&](auto mode) {
        backward_boxes_impl<in_t, grad_t, acc_t, taps_of(decltype(mode)::value)>(
            grad, images, boxes, bi, grad_boxes, call.mode, call.padding, align_corners,
            call.affine);
      });
    });
  });
  return grad_boxes;
}

}  // namespace

TORCH_LIBRARY_IMPL(gfkernels, CPU, m) {
  m.impl("crop_resize", &crop_resize_cpu);
  m.impl("crop_resize_backward_images", &crop_resize_backward_images_cpu);
  m.impl("crop_resize_backward_boxes", &crop_resize_backward_boxes_cpu);
}

}  // namespace gfkernels
