// early_exit and gather_rows on CUDA. Everything runs on the current stream and nothing is
// read back on the host: the threshold is read by the kernel (a CUDA tensor) or on the host
// from a CPU scalar tensor (no device sync); num_keep stays on the device. Launches are checked
// with C10_CUDA_KERNEL_LAUNCH_CHECK; index values out of range trip a device-side assert
// (checking them on the host would cost a sync) and are never dereferenced.
//
// early_exit = two launches:
//   1. confidence_kernel: one warp per row. Max (NaN-aware) and sum of exp(x - max) by warp
//      shuffles, float32 (float64 for float64 logits), the exit decision, and for exiting rows
//      the copy of the row to out_logits[active[i]] and exit_step[active[i]] = step.
//   2. compact_kernel: one block of 1024 threads; counts the survivors (block reduce), then
//      walks the flags in tiles of 1024 with a CUB block scan and a running carry, writing
//      survivors (then the exiting rows, after num_keep) in order. n is a batch size, so a
//      single block is enough (n = 64K rows is 64 tiles).
// gather_rows = one launch for up to kMaxTensors tensors: a flat range of blocks per tensor,
// each thread moving a few units (1..16 bytes: the widest power of two that the row layout,
// strides and pointers allow) through up to kMaxDims collapsed trailing dims.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cmath>
#include <cstdint>
#include <vector>

#include "../ops/early_exit.h"

namespace gfkernels {
namespace {

// ---------------------------------------------------------------------------------------
// early_exit
// ---------------------------------------------------------------------------------------

constexpr int kExitThreads = 256;  // 8 warps = 8 rows per block
constexpr int kCompactThreads = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return ::exp(x); }

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kExitThreads)
confidence_kernel(const scalar_t* __restrict__ logits, int64_t sn, int64_t sk, int64_t n,
                  int64_t K, const double* __restrict__ thr_ptr, double thr_value,
                  const int64_t* __restrict__ active, int64_t sa, int64_t B,
                  scalar_t* __restrict__ out, int64_t on, int64_t ok,
                  int64_t* __restrict__ steps, int64_t ss, int64_t step,
                  uint8_t* __restrict__ flags) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kExitThreads / 32) + threadIdx.x / 32;
  if (row >= n) return;  // whole warps leave together
  const acc_t thr = static_cast<acc_t>(thr_ptr != nullptr ? *thr_ptr : thr_value);
  const bool all_exit = isinf(thr) && thr < acc_t(0);
  const scalar_t* x = logits + row * sn;
  bool exits = all_exit;
  if (!exits) {
    acc_t m = -INFINITY;
    bool nan = false;
    for (int64_t j = lane; j < K; j += 32) {
      const acc_t v = static_cast<acc_t>(x[j * sk]);
      nan |= v != v;
      m = v > m ? v : m;
    }
    for (int o = 16; o > 0; o >>= 1) {
      const acc_t other = __shfl_xor_sync(kFullMask, m, o);
      m = other > m ? other : m;
    }
    nan = __any_sync(kFullMask, nan);
    acc_t s = 0;
    for (int64_t j = lane; j < K; j += 32) s += exp_of(static_cast<acc_t>(x[j * sk]) - m);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFullMask, s, o);
    // With a +inf max or every logit -inf, x - m is NaN, so s and the confidence are NaN and
    // the comparison is false: softmax is undefined there, as with a NaN logit.
    const acc_t conf = acc_t(1) / s;
    exits = !nan && conf >= thr;
  }
  if (lane == 0) flags[row] = exits ? 1 : 0;
  if (!exits) return;
  const int64_t a = active[row * sa];
  CUDA_KERNEL_ASSERT(a >= 0 && a < B && "early_exit: active values must lie in [0, B)");
  if (a < 0 || a >= B) return;
  scalar_t* y = out + a * on;
  for (int64_t j = lane; j < K; j += 32) y[j * ok] = x[j * sk];
  if (lane == 0) steps[a * ss] = step;
}

__global__ void __launch_bounds__(kCompactThreads)
compact_kernel(const uint8_t* __restrict__ flags, int64_t n, int64_t* __restrict__ keep,
               int64_t* __restrict__ num_keep) {
  using Reduce = cub::BlockReduce<int64_t, kCompactThreads>;
  using Scan = cub::BlockScan<int, kCompactThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ int64_t total_shared;
  const int tid = threadIdx.x;

  int64_t local = 0;
  for (int64_t i = tid; i < n; i += kCompactThreads) local += flags[i] == 0;
  const int64_t total_0 = Reduce(temp.reduce).Sum(local);  // valid in thread 0
  if (tid == 0) total_shared = total_0;
  __syncthreads();
  const int64_t total = total_shared;

  int64_t kept = 0, gone = total;  // where this tile's survivors / exiting rows start
  for (int64_t tile = 0; tile < n; tile += kCompactThreads) {
    const int64_t i = tile + tid;
    const bool valid = i < n;
    const int survive = valid && flags[i] == 0;
    int before, tile_survivors;
    Scan(temp.scan).ExclusiveSum(survive, before, tile_survivors);
    if (valid) {
      // threads before tid in this tile are all valid: tid - before of them exit
      if (survive) {
        keep[kept + before] = i;
      } else {
        keep[gone + (tid - before)] = i;
      }
    }
    const int64_t tile_rows = n - tile < kCompactThreads ? n - tile : kCompactThreads;
    kept += tile_survivors;
    gone += tile_rows - tile_survivors;
    __syncthreads();  // temp.scan is reused by the next tile
  }
  if (tid == 0) *num_keep = total;
}

std::tuple<at::Tensor, at::Tensor> early_exit_cuda(const at::Tensor& logits,
                                                   const at::Tensor& threshold,
                                                   const at::Tensor& active,
                                                   at::Tensor& out_logits, at::Tensor& exit_step,
                                                   int64_t step) {
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor keep, num_keep;
  std::tie(keep, num_keep) = prepare_early_exit(logits, threshold, active, out_logits, exit_step);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = logits.size(0), K = logits.size(1), B = out_logits.size(0);
  if (n == 0) {
    num_keep.zero_();  // a fill on the current stream
    return {keep, num_keep};
  }
  // The threshold: read by the kernel from the device, or here from a CPU scalar (no sync).
  at::Tensor thr_device;
  const double* thr_ptr = nullptr;
  double thr_value = 0.0;
  if (threshold.is_cuda()) {
    thr_device = threshold.to(at::kDouble);  // a no-op for float64, else a tiny cast kernel
    thr_ptr = thr_device.const_data_ptr<double>();
  } else {
    thr_value = threshold.item<double>();
  }
  at::Tensor flags = at::empty({n}, logits.options().dtype(at::kByte));
  const int64_t rows_per_block = kExitThreads / 32;
  const dim3 grid(static_cast<unsigned>((n + rows_per_block - 1) / rows_per_block));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "early_exit_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    confidence_kernel<scalar_t, acc_t><<<grid, kExitThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), logits.stride(0), logits.stride(1), n, K, thr_ptr,
        thr_value, active.const_data_ptr<int64_t>(), active.stride(0), B,
        out_logits.mutable_data_ptr<scalar_t>(), out_logits.stride(0), out_logits.stride(1),
        exit_step.mutable_data_ptr<int64_t>(), exit_step.stride(0), step,
        flags.mutable_data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  compact_kernel<<<1, kCompactThreads, 0, stream>>>(flags.const_data_ptr<uint8_t>(), n,
                                                    keep.mutable_data_ptr<int64_t>(),
                                                    num_keep.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {keep, num_keep};
}

// ---------------------------------------------------------------------------------------
// gather_rows
// ---------------------------------------------------------------------------------------

constexpr int kMaxDims = 6;
constexpr int kMaxTensors = 16;
constexpr int kGatherThreads = 256;
constexpr int kGatherItems = 4;  // units per thread
constexpr int64_t kUnitsPerBlock = kGatherThreads * kGatherItems;

// One tensor's row layout, in units of `unit` bytes: the source row r starts at
// src + index[r] * row_stride units and its element u (row-major over sizes) sits at
// sum_d coord_d(u) * strides[d]; the destination row is contiguous.
struct TensorMeta {
  const char* src;
  char* dst;
  int64_t row_stride;
  int64_t row_units;
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxDims];
  int64_t block_begin;
  int32_t ndim;
  int32_t unit;
};

struct GatherBatch {
  TensorMeta t[kMaxTensors];
  int32_t count;
};

template <typename U>
__device__ __forceinline__ void move_unit(const char* src, char* dst, int64_t src_unit,
                                          int64_t dst_unit) {
  reinterpret_cast<U*>(dst)[dst_unit] = reinterpret_cast<const U*>(src)[src_unit];
}

__global__ void __launch_bounds__(kGatherThreads)
gather_kernel(const GatherBatch batch, const int64_t* __restrict__ index, int64_t n, int64_t N) {
  int t = 0;
  while (t + 1 < batch.count && static_cast<int64_t>(blockIdx.x) >= batch.t[t + 1].block_begin)
    ++t;
  const TensorMeta& m = batch.t[t];
  const int64_t total = n * m.row_units;
  const int64_t base = (static_cast<int64_t>(blockIdx.x) - m.block_begin) * kUnitsPerBlock;
#pragma unroll
  for (int k = 0; k < kGatherItems; ++k) {
    const int64_t u = base + k * kGatherThreads + threadIdx.x;
    if (u >= total) break;
    const int64_t r = u / m.row_units;
    int64_t j = u - r * m.row_units;
    const int64_t row = index[r];
    CUDA_KERNEL_ASSERT(row >= 0 && row < N && "gather_rows: index values must lie in [0, N)");
    if (row < 0 || row >= N) continue;
    int64_t offset = row * m.row_stride;
    for (int d = m.ndim - 1; d >= 0; --d) {
      const int64_t size = m.sizes[d];
      const int64_t q = d > 0 ? j / size : 0;
      offset += (j - q * size) * m.strides[d];
      j = q;
    }
    switch (m.unit) {
      case 16: move_unit<uint4>(m.src, m.dst, offset, u); break;
      case 8: move_unit<uint64_t>(m.src, m.dst, offset, u); break;
      case 4: move_unit<uint32_t>(m.src, m.dst, offset, u); break;
      case 2: move_unit<uint16_t>(m.src, m.dst, offset, u); break;
      default: move_unit<uint8_t>(m.src, m.dst, offset, u); break;
    }
  }
}

// Fills m for tensor t (with output out); false when its row needs more than kMaxDims dims.
bool describe(const at::Tensor& t, const at::Tensor& out, TensorMeta& m) {
  const RowLayout layout = row_layout(t);
  const std::vector<int64_t>& sizes = layout.sizes;
  const std::vector<int64_t>& strides = layout.strides;
  if (static_cast<int>(sizes.size()) > kMaxDims) return false;
  const int64_t e = static_cast<int64_t>(t.element_size());
  int64_t unit = e;
  if (!sizes.empty() && strides.back() == 1) {
    // widen the unit while it divides the contiguous inner run, every stride and both bases
    const auto src_addr = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    const auto dst_addr = reinterpret_cast<uintptr_t>(out.const_data_ptr());
    while (unit < 16) {
      const int64_t w = unit * 2;
      bool ok = (sizes.back() * e) % w == 0 && (t.stride(0) * e) % w == 0 &&
                src_addr % w == 0 && dst_addr % w == 0;
      for (size_t d = 0; d + 1 < sizes.size(); ++d) ok = ok && (strides[d] * e) % w == 0;
      if (!ok) break;
      unit = w;
    }
  }
  const int64_t per = unit / e;  // elements per unit (1 unless the inner run is contiguous)
  m.src = static_cast<const char*>(t.const_data_ptr());
  m.dst = static_cast<char*>(out.data_ptr());
  m.row_stride = t.stride(0) * e / unit;
  m.ndim = static_cast<int32_t>(sizes.size());
  m.unit = static_cast<int32_t>(unit);
  m.row_units = 1;
  for (int d = 0; d < m.ndim; ++d) {
    const bool inner = d == m.ndim - 1;
    m.sizes[d] = inner ? sizes[d] / per : sizes[d];
    m.strides[d] = inner && per > 1 ? 1 : strides[d] * e / unit;
    m.row_units *= m.sizes[d];
  }
  return true;
}

void launch_gather(GatherBatch& batch, int64_t blocks, const int64_t* index, int64_t n,
                   int64_t N, cudaStream_t stream) {
  if (batch.count == 0 || blocks == 0) return;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "gather_rows: too many rows to gather in one launch");
  gather_kernel<<<static_cast<unsigned>(blocks), kGatherThreads, 0, stream>>>(batch, index, n, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  batch.count = 0;
}

std::vector<at::Tensor> gather_rows_cuda(at::TensorList tensors, const at::Tensor& index,
                                         int64_t n) {
  const c10::cuda::CUDAGuard guard(index.device());
  std::vector<at::Tensor> outs = prepare_gather_rows(tensors, index, n);
  if (tensors.empty()) return outs;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor rows = index.slice(0, 0, n).contiguous();
  const int64_t N = tensors[0].size(0);
  GatherBatch batch;
  batch.count = 0;
  int64_t blocks = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    at::Tensor& out = outs[i];
    if (out.numel() == 0) continue;
    TensorMeta m;
    if (!describe(t, out, m)) {  // rare: a row of more than kMaxDims non-mergeable dims
      at::index_select_out(out, t, 0, rows);
      continue;
    }
    if (batch.count == kMaxTensors) {
      launch_gather(batch, blocks, rows.const_data_ptr<int64_t>(), n, N, stream);
      blocks = 0;
    }
    m.block_begin = blocks;
    batch.t[batch.count++] = m;
    blocks += (n * m.row_units + kUnitsPerBlock - 1) / kUnitsPerBlock;
  }
  launch_gather(batch, blocks, rows.const_data_ptr<int64_t>(), n, N, stream);
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(gfkernels, CUDA, m) {
  m.impl("early_exit", &early_exit_cuda);
  m.impl("gather_rows", &gather_rows_cuda);
}

}  // namespace gfkernels
