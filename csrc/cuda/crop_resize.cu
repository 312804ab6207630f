// crop_resize on CUDA: forward, backward wrt images (atomics, or a deterministic gather when
// torch.use_deterministic_algorithms(True)), backward wrt boxes (block reductions).
//
// Forward (the hot path). One launch per call, a 1-D grid: each block covers a tile of one
// box's output, kPixels pixels per thread. The mode is a template parameter, so each mode
// compiles to its own kernel with only its taps in registers (and its own launch bounds). The
// interpolating path puts the lanes of a warp on consecutive output columns (a thread takes
// kPixels rows of one column), computes its column taps once and each row's taps (sampling.h,
// positions in double), then, for every chunk of kChannelChunk channels, loads all of them
// before storing any (the loads overlap; channel slots past C are predicated off), applies the
// normalisation in the accumulation type (float unless float64 is involved) and stores.
// Integer boxes of the output's size (GFNet's focus crops) take a copy path in the same kernel
// that computes no taps: a thread moves kPixels consecutive pixels of a row, with vector loads
// and stores where the rows allow. Boxes are read in their own dtype and strides and
// batch_index with its stride: the call launches nothing but the kernel.
//
// Backward wrt images with atomics maps one thread to one output pixel: blockIdx.y picks the
// box (a grid-stride loop covers B > 65535) and blockIdx.x * blockDim.x + threadIdx.x the
// pixel. The deterministic gather maps one thread to one image pixel (grid-stride), and the
// backward wrt boxes a block to a slice of one box's pixels (see their sections).
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
#include <cstring>

#include "../ops/crop_resize.h"

namespace gfkernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;
constexpr int kAffineSlots = 64;  // channels whose affine map travels in the kernel arguments
constexpr int kChannelChunk = 4;  // channels a forward thread loads before it stores
// Per-box output pixels: indices are int32 with room for a tile past the end.
constexpr int64_t kMaxPixels = kMaxOutputElementsPerBox;  // the ops' own limit (sampling.h)

// ---------------------------------------------------------------------------------------
// Arguments read on the device
// ---------------------------------------------------------------------------------------

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

// The output pixel p = i * w + j of an h x w crop that this thread computes (threads of a block
// row cover consecutive pixels); false for the threads past the end.
__device__ __forceinline__ bool pixel_of_thread(int h, int w, int& p, int& i, int& j) {
  p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= h * w) return false;
  i = p / w;
  j = p - i * w;
  return true;
}

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

// out[k] = v[k] * scale + shift for the n (<= N) pixels of a group, one vector store when the
// whole group is there and aligned.
template <int N, typename out_t, typename acc_t>
__device__ __forceinline__ void store_pixels(out_t* __restrict__ dst, const acc_t (&v)[N], int n,
                                             acc_t scale, acc_t shift) {
  Pack<out_t, N> pack;
#pragma unroll
  for (int k = 0; k < N; ++k) pack.v[k] = static_cast<out_t>(v[k] * scale + shift);
  if (n == N && aligned_for<N>(dst)) {
    *reinterpret_cast<Pack<out_t, N>*>(dst) = pack;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (k < n) dst[k] = pack.v[k];
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

template <Mode MODE, typename in_t, typename out_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, (ForwardShape<MODE, acc_t>::kMinBlocks))
    forward_kernel(const in_t* __restrict__ img, Boxes boxes, BatchIndex batch_index,
                   out_t* __restrict__ out, ImageLayout g, int h, int w, int groups_per_row,
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
    out_t* dst = box_out + (i * w + j0);
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
          store_pixels<P>(dst + c * plane_out, v[cc], n_pix, affine.scale_of(c),
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
    out_t* dst = box_out + (band * P + k0) * w + j;
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
            if (k < n_group) dst[c * plane_out + k * w] = static_cast<out_t>(v[cc][k] * scale + shift);
          }
        }
      }
    }
  }
}

template <Mode MODE, typename in_t, typename out_t, typename acc_t>
void launch_forward(const at::Tensor& images, const Boxes& boxes, const BatchIndex& batch_index,
                    at::Tensor& out, int64_t B, int h, int w, Padding padding,
                    bool align_corners, const Affine<acc_t>& affine, cudaStream_t stream) {
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
          image_layout(images, h, w), h, w, groups_per_row, static_cast<int>(blocks_per_box),
          padding, align_corners, affine);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor crop_resize_cuda(const at::Tensor& images, const at::Tensor& boxes,
                            const std::optional<at::Tensor>& batch_index, at::IntArrayRef size,
                            c10::string_view mode_name, bool align_corners,
                            c10::string_view padding_name,
                            std::optional<c10::ArrayRef<double>> mean,
                            std::optional<c10::ArrayRef<double>> std, at::ScalarType out_dtype) {
  c10::cuda::CUDAGuard guard(images.device());
  const CropResizeCall call = prepare_crop_resize(images, boxes, batch_index, size, mode_name,
                                                  align_corners, padding_name, mean, std,
                                                  out_dtype, /*check_values=*/false);
  const int64_t h = size[0], w = size[1], B = boxes.size(0);
  check_sizes(h, w);
  at::Tensor out = at::empty({B, images.size(1), h, w}, images.options().dtype(out_dtype));
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
// Backward wrt images, atomics: every output pixel scatters into the taps it read.
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
// Backward wrt boxes: blocks (s, b) sum their pixels' contributions in registers, reduce them
// in the block (warp shuffles, then shared memory) and write one partial per block; the
// partials are summed in a fixed order. Deterministic, no atomics.
// ---------------------------------------------------------------------------------------

constexpr int kBoxSums = 4;

__device__ __forceinline__ void block_reduce(double (&v)[kBoxSums], double* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int k = 0; k < kBoxSums; ++k) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kBoxSums; ++k) shared[k * 32 + warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < kBoxSums; ++k) {
      v[k] = lane < warps ? shared[k * 32 + lane] : 0.0;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
  }
  __syncthreads();  // `shared` is reused by the next box
}

template <typename in_t>
__global__ void __launch_bounds__(kThreads)
    backward_boxes_kernel(AnyFloat grad, const in_t* __restrict__ img, Boxes boxes,
                          BatchIndex batch_index, Geometry g, int64_t B, int h, int w, Mode mode,
                          Padding padding, bool align_corners,
                          const __grid_constant__ Affine<double> affine,
                          double* __restrict__ partial) {
  __shared__ double shared[kBoxSums * 32];
  const int64_t hw = static_cast<int64_t>(h) * w;
  const int nt = taps_of(mode);
  const int S = gridDim.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const in_t* plane = img + batch_index.image_of(b) * g.sN;
    const Box box = boxes.load(b);
    double sums[kBoxSums] = {0.0, 0.0, 0.0, 0.0};  // dx1, dy1, dx2, dy2
    // 64-bit pixel index: p + S * blockDim.x may pass 2^31 on the last stride.
    for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < hw;
         p += static_cast<int64_t>(S) * blockDim.x) {
      const int i = static_cast<int>(p / w), j = static_cast<int>(p - static_cast<int64_t>(i) * w);
      Taps ty, tx;
      device_taps(source_position(box.y1, box.y2, i, h, align_corners), g.H, mode, padding, ty);
      device_taps(source_position(box.x1, box.x2, j, w, align_corners), g.W, mode, padding, tx);
      double gx = 0.0, gy = 0.0;  // d loss / d (column position), d loss / d (row position)
      for (int64_t c = 0; c < g.C; ++c) {
        const double gv = grad.load<double>((b * g.C + c) * hw + p) * affine.scale_of(c);
        if (gv == 0.0) continue;
        const in_t* src = plane + c * g.sC;
        double dvx = 0.0, dvy = 0.0;
#pragma unroll
        for (int a = 0; a < kMaxTaps; ++a) {
          if (a < nt) {
            const in_t* row = src + ty.index[a] * g.sH;
            double r = 0.0, dr = 0.0;
#pragma unroll
            for (int k = 0; k < kMaxTaps; ++k) {
              if (k < nt) {
                const double v = static_cast<double>(row[tx.index[k] * g.sW]);
                r += tx.weight[k] * v;
                dr += tx.dweight[k] * v;
              }
            }
            dvx += ty.weight[a] * dr;
            dvy += ty.dweight[a] * r;
          }
        }
        gx += gv * dvx;
        gy += gv * dvy;
      }
      const double fx = source_position_dhi(j, w, align_corners);
      const double fy = source_position_dhi(i, h, align_corners);
      sums[0] += gx * (1.0 - fx);
      sums[2] += gx * fx;
      sums[1] += gy * (1.0 - fy);
      sums[3] += gy * fy;
    }
    block_reduce(sums, shared);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int k = 0; k < kBoxSums; ++k) partial[(b * S + blockIdx.x) * kBoxSums + k] = sums[k];
    }
  }
}

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
  const at::Tensor grad = grad_in.contiguous();
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
