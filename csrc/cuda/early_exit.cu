// early_exit on CUDA. Everything runs on the current stream and nothing is read back on the
// host: the threshold is read by the kernel (a CUDA tensor) or on the host from a CPU scalar
// tensor (no device sync); num_keep stays on the device. Launches are checked with
// C10_CUDA_KERNEL_LAUNCH_CHECK; index values out of range trip a device-side assert (checking
// them on the host would cost a sync) and are never dereferenced.
//
// early_exit = two launches:
//   1. confidence_kernel: one warp per row. Max (NaN-aware) and sum of exp(x - max) by warp
//      shuffles, float32 (float64 for float64 logits), the exit decision, and for exiting rows
//      the copy of the row to out_logits[active[i]] and exit_step[active[i]] = step.
//   2. compact_kernel: one block of 1024 threads; counts the survivors (block reduce), then
//      walks the flags in tiles of 1024 with a CUB block scan and a running carry, writing
//      survivors (then the exiting rows, after num_keep) in order. n is a batch size, so a
//      single block is enough (n = 64K rows is 64 tiles).
//
// gather_rows, the compaction of every per-sample tensor that follows, is in gather_rows.cuh and
// is compiled and registered here: it has no translation unit of its own.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cmath>
#include <cstdint>

#include "../ops/early_exit.h"
#include "gather_rows.cuh"

namespace gfkernels {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(gfkernels, CUDA, m) {
  m.impl("early_exit", &early_exit_cuda);
  m.impl("gather_rows", &gather_rows_cuda);
}

}  // namespace gfkernels
