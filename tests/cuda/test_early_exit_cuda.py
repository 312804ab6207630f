"""early_exit and gather_rows on a CUDA GPU: the CUDA and Triton kernels against the reference,
and one step of the inference loop without a host sync besides reading num_keep."""

from __future__ import annotations

import math

import pytest
import torch

from gfkernels import backends, early_exit, gather_rows, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def cuda_backends():
    if not torch.cuda.is_available():
        return []
    return [b for b in ("cuda", "triton") if backends.TABLE[b].available(torch.device("cuda"))]


BACKENDS = cuda_backends() or ["cuda"]  # an empty list would hide the skip reason


def _require(backend):
    if backend not in cuda_backends():
        pytest.skip(f"backend {backend!r} is not available on this machine")


def random_case(n, K, B, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, K, generator=g) * 3).to(dtype)
    active = torch.randperm(B, generator=g)[:n]
    return logits, active


def safe_threshold(logits, fraction):
    conf = reference.exit_confidence(logits)
    conf = conf[~conf.isnan()].double().sort().values
    candidates = torch.cat([torch.zeros(1, dtype=conf.dtype), conf,
                            torch.full((1,), 1.5, dtype=conf.dtype)])
    i = min(int((1 - fraction) * conf.numel()), max(conf.numel() - 1, 0))
    gaps = (candidates[1:] - candidates[:-1]).tolist()
    j = min((j for j, gap in enumerate(gaps) if gap > 1e-5), key=lambda j: abs(j - i))
    return float(candidates[j] + candidates[j + 1]) / 2


def run(backend, logits, threshold, active, B, device):
    K = logits.shape[1]
    out_logits = torch.full((B, K), 7.25, dtype=logits.dtype, device=device)
    exit_step = torch.full((B,), -1, dtype=torch.int64, device=device)
    if isinstance(threshold, torch.Tensor) and device == "cpu":
        threshold = threshold.cpu()  # the reference's run: a GPU threshold's value, on the CPU
    keep, num_keep = early_exit(logits.to(device), threshold, active.to(device), out_logits,
                                exit_step, 3, backend=backend)
    return keep, num_keep, out_logits, exit_step


def assert_matches(backend, logits, threshold, active, B):
    got = run(backend, logits, threshold, active, B, "cuda")
    ref = run("reference", logits, threshold, active, B, "cpu")
    assert got[1].device.type == "cuda" and got[1].dim() == 0
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0, equal_nan=True)
    return got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [0, 1, 37, 1000, 5000])
@pytest.mark.parametrize("K", [1, 10, 1000, 3000])
@pytest.mark.parametrize("fraction", ["none", 0.1, 0.5, 0.9, "-inf"])
def test_early_exit_random(backend, n, K, fraction):
    _require(backend)
    logits, active = random_case(n, K, n + 7, seed=n + K)
    threshold = {"none": 1.5, "-inf": -math.inf}.get(fraction)
    if threshold is None:
        threshold = safe_threshold(logits, fraction)
    assert_matches(backend, logits, threshold, active, n + 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_early_exit_dtypes_and_threshold_tensors(backend, dtype):
    _require(backend)
    logits, active = random_case(300, 100, 400, dtype=dtype, seed=1)
    thr = safe_threshold(logits, 0.5)
    for threshold in (thr, torch.tensor(thr), torch.tensor(thr, device="cuda"),
                      torch.tensor(thr, dtype=torch.float64, device="cuda")):
        assert_matches(backend, logits, threshold, active, 400)


@pytest.mark.parametrize("backend", BACKENDS)
def test_early_exit_ties_nan_and_large_n(backend):
    _require(backend)
    inf = math.inf
    logits = torch.tensor([[1.0, 1.0, -inf], [0.0, -inf, -inf], [2.0, 2.0, 2.0],
                           [float("nan"), 0.0, 1.0], [inf, 0.0, 0.0], [-inf, -inf, -inf]])
    active = torch.tensor([5, 0, 4, 1, 3, 2])
    for thr in (0.5, 1.0, 1.0 / 3.0, 0.0, -inf):
        assert_matches(backend, logits, thr, active, 6)
    # many tiles of the compaction
    logits, active = random_case(100_000, 4, 100_000, seed=2)
    assert_matches(backend, logits, safe_threshold(logits, 0.3), active, 100_000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_early_exit_non_contiguous(backend):
    _require(backend)
    n, K, B = 70, 33, 90
    logits = (torch.randn(K, n) * 3).t()
    active = torch.randperm(B)[:n].repeat_interleave(2)[::2]
    thr = safe_threshold(logits, 0.5)
    dev = dict(logits=logits.cuda(), active=active.cuda())
    big = torch.full((B, 2 * K), 7.25, device="cuda")
    steps = torch.full((2 * B,), -1, dtype=torch.int64, device="cuda")
    keep, num_keep = early_exit(dev["logits"], thr, dev["active"], big[:, ::2], steps[::2], 3,
                                backend=backend)
    ref = run("reference", logits, thr, active, B, "cpu")
    torch.testing.assert_close(keep.cpu(), ref[0], rtol=0, atol=0)
    torch.testing.assert_close(big[:, ::2].cpu(), ref[2], rtol=0, atol=0)
    torch.testing.assert_close(steps[::2].cpu(), ref[3], rtol=0, atol=0)
    assert (big[:, 1::2] == 7.25).all() and (steps[1::2] == -1).all()


def mixed_tensors(N):
    f32 = torch.randn(N, 1024)
    f16 = torch.randn(N, 3, 7).half().permute(0, 2, 1)
    i64 = torch.randint(-1000, 1000, (N,))
    b = torch.rand(N, 5) > 0.5
    c64 = torch.randn(N, 3, dtype=torch.complex64)
    c128 = torch.randn(N, 2, 2, dtype=torch.complex128)
    u8 = torch.randint(0, 255, (N, 4, 6, 5), dtype=torch.uint8)[:, ::2, :, 1:]
    seven = torch.randn(N, 2, 3, 2, 3, 2, 3, 2).permute(0, 7, 6, 5, 4, 3, 2, 1)  # > 6 dims
    rows_strided = torch.randn(2 * N, 6).bfloat16()[::2]
    fmap = torch.randn(N, 64, 3, 3)
    odd = torch.randn(N, 3, dtype=torch.float64)[:, 1:]  # misaligned base
    return [f32, f16, i64, b, c64, c128, u8, seven, rows_strided, fmap, odd]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,n", [(1, 0), (1, 1), (50, 20), (50, 50), (600, 333)])
def test_gather_rows(backend, N, n):
    _require(backend)
    tensors = mixed_tensors(N)
    index = torch.cat([torch.randperm(N), torch.randint(0, N, (5,))])
    got = gather_rows([t.cuda() for t in tensors], index.cuda(), n, backend=backend)
    want = reference.gather_rows(tensors, index, n)
    for g_, w in zip(got, want):
        assert g_.is_cuda and g_.is_contiguous() and g_.shape == w.shape and g_.dtype == w.dtype
        torch.testing.assert_close(g_.cpu(), w, rtol=0, atol=0)


def test_gather_rows_more_tensors_than_one_launch():
    _require("cuda")
    tensors = [torch.randn(40, i + 1, device="cuda") for i in range(37)]
    index = torch.randperm(40, device="cuda")
    for g_, t in zip(gather_rows(tensors, index, 25), tensors):
        torch.testing.assert_close(g_, t[index[:25]], rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threshold_kind", ["float", "cuda_tensor"])
def test_one_step_has_no_host_sync_but_num_keep(backend, threshold_kind):
    _require(backend)
    B, K = 256, 1000
    logits = torch.randn(B, K, device="cuda") * 4
    active = torch.randperm(2 * B, device="cuda")[:B]
    h, policy = torch.randn(B, 1024, device="cuda"), torch.randn(B, 1024, device="cuda")
    fmap = torch.randn(B, 2048, 3, 3, device="cuda")
    out_logits = torch.zeros(2 * B, K, device="cuda")
    exit_step = torch.full((2 * B,), -1, dtype=torch.int64, device="cuda")
    threshold = 0.3 if threshold_kind == "float" else torch.tensor(0.3, device="cuda")
    # warm up (allocator, Triton compilation) before watching for syncs
    keep, num_keep = early_exit(logits, threshold, active, out_logits, exit_step, 1,
                                backend=backend)
    gather_rows([h, policy, fmap], keep, int(num_keep), backend=backend)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        keep, num_keep = early_exit(logits, threshold, active, out_logits, exit_step, 2,
                                    backend=backend)
        torch.cuda.set_sync_debug_mode("default")
        n = int(num_keep)  # the one sync of a step
        torch.cuda.set_sync_debug_mode("error")
        new_active = active[keep[:n]]
        h2, p2, f2 = gather_rows([h, policy, fmap], keep, n, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(h2, h[keep[:n]], rtol=0, atol=0)
    torch.testing.assert_close(f2, fmap[keep[:n]], rtol=0, atol=0)
    assert new_active.shape == (n,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_at_the_threshold(backend):
    """Rows of K equal logits: confidence exactly 1 / K, and a threshold of 1 / K (rounded to
    float32) is a tie, which exits on every backend (correctly rounded division)."""
    _require(backend)
    for K in (3, 6, 7, 10, 11, 13, 100, 1000, 1001):
        logits = torch.full((4, K), 0.75)
        thr = torch.tensor(1.0 / K, dtype=torch.float32)
        for threshold in (thr, thr.cuda()):
            keep, num_keep, _, exit_step = run(backend, logits, threshold, torch.arange(4), 4,
                                               "cuda")
            assert int(num_keep) == 0, (K, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_rows_strided_index(backend):
    _require(backend)
    t = torch.randn(12, 5, device="cuda")
    index = torch.randperm(12, device="cuda").repeat(2)[::2]
    assert not index.is_contiguous()
    out, = gather_rows([t], index, 6, backend=backend)
    torch.testing.assert_close(out, t[index[:6]], rtol=0, atol=0)
