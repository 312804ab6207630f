"""early_exit and gather_rows: every backend available here (cpp, reference, and triton under
TRITON_INTERPRET=1) against the reference, errors, gradients and opcheck on every backend, and
torch.compile on CPU."""

from __future__ import annotations

import math

import pytest
import torch

import gfkernels
from gfkernels import backends, early_exit, gather_rows, reference

from tests.helpers import CPU_BACKENDS as BACKENDS, OP_BACKENDS

HAVE_CPP = "cpp" in BACKENDS
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="gfkernels._C is not built")

SENTINEL = 7.25


def run_exit(backend, logits, threshold, active, B, *, out_logits=None, exit_step=None, step=3):
    K = logits.shape[1]
    if out_logits is None:
        out_logits = torch.full((B, K), SENTINEL, dtype=logits.dtype)
    if exit_step is None:
        exit_step = torch.full((B,), -1, dtype=torch.int64)
    keep, num_keep = early_exit(logits, threshold, active, out_logits, exit_step, step,
                                backend=backend)
    return keep, num_keep, out_logits, exit_step


def assert_exit_matches(backend, logits, threshold, active, B, **kw):
    got = run_exit(backend, logits, threshold, active, B, **kw)
    kw_ref = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = run_exit("reference", logits, threshold, active, B, **kw_ref)
    keep, num_keep, out_logits, exit_step = got
    assert keep.dtype == torch.int64 and keep.shape == (logits.shape[0],)
    assert num_keep.dtype == torch.int64 and num_keep.dim() == 0
    assert int(num_keep) == int(ref[1])
    torch.testing.assert_close(keep, ref[0], rtol=0, atol=0)
    torch.testing.assert_close(out_logits, ref[2], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(exit_step, ref[3], rtol=0, atol=0)
    return got


def random_case(n, K, B=None, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    B = B if B is not None else n + 5
    logits = (torch.randn(n, K, generator=g) * scale).to(dtype)
    active = torch.randperm(B, generator=g)[:n]
    return logits, active, B


def safe_threshold(logits, fraction):
    """A threshold that lets about `fraction` of the rows exit, midway between two
    confidences far enough apart that no backend's rounding can flip a decision."""
    conf = reference.exit_confidence(logits)
    conf = conf[~conf.isnan()].double().sort().values
    if conf.numel() == 0:
        return 0.5
    i = min(int((1 - fraction) * conf.numel()), conf.numel() - 1)
    candidates = torch.cat([torch.zeros(1, dtype=conf.dtype), conf, torch.full((1,), 1.5,
                                                                              dtype=conf.dtype)])
    # the gap nearest to position i that is wide enough
    gaps = (candidates[1:] - candidates[:-1]).tolist()
    wide = [j for j, gap in enumerate(gaps) if gap > 1e-5]
    j = min(wide, key=lambda j: abs(j - i))
    best = float(candidates[j] + candidates[j + 1]) / 2
    return best


# ----------------------------------------------------------------------------------------
# early_exit against the reference
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("n", [0, 1, 2, 37, 300])
@pytest.mark.parametrize("K", [1, 2, 10, 1000])
@pytest.mark.parametrize("fraction", ["none", 0.1, 0.5, 0.9, "all", "-inf"])
def test_early_exit_random(backend, n, K, fraction):
    logits, active, B = random_case(n, K, seed=n * 1000 + K)
    if fraction == "none":
        threshold = 1.5  # confidences are <= 1
    elif fraction == "all":
        threshold = 0.0
    elif fraction == "-inf":
        threshold = -math.inf
    else:
        threshold = safe_threshold(logits, fraction)
    keep, num_keep, *_ = assert_exit_matches(backend, logits, threshold, active, B)
    if fraction == "none":
        assert int(num_keep) == n
    if fraction in ("all", "-inf"):
        assert int(num_keep) == 0


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_early_exit_dtypes(backend, dtype):
    logits, active, B = random_case(64, 100, dtype=dtype, seed=5)
    for fraction in (0.2, 0.7):
        assert_exit_matches(backend, logits, safe_threshold(logits, fraction), active, B)


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_early_exit_ties_at_threshold(backend, dtype):
    """Confidences that are exact in binary: equal logits over K = 2, 4 (0.5, 0.25), K = 1
    (1.0) and one finite logit among -inf (1.0). A row whose confidence equals the threshold
    exits; one ulp above it, it stays."""
    inf = math.inf
    rows = [[1.0, 1.0, -inf, -inf], [0.0, -inf, -inf, -inf], [3.0, 3.0, 3.0, 3.0],
            [-2.0, -2.0, -inf, -inf], [5.0, -inf, -inf, -inf]]
    logits = torch.tensor(rows, dtype=dtype)
    active = torch.tensor([4, 0, 2, 1, 3])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    #           thr: (rows exiting at thr, rows exiting one ulp above thr)
    cases = {0.5: ([1, 1, 0, 1, 1], [0, 1, 0, 0, 1]),
             0.25: ([1, 1, 1, 1, 1], [1, 1, 0, 1, 1]),
             1.0: ([0, 1, 0, 0, 1], [0, 0, 0, 0, 0])}
    for thr, (at, above) in cases.items():
        _, _, _, steps = assert_exit_matches(backend, logits, thr, active, 6)
        assert steps[active].ne(-1).long().tolist() == at
        up = torch.nextafter(torch.tensor(thr, dtype=acc), torch.tensor(2.0, dtype=acc))
        _, _, _, steps = assert_exit_matches(backend, logits, up.double(), active, 6)
        assert steps[active].ne(-1).long().tolist() == above
    # K = 1: confidence exactly 1
    logits = torch.randn(9, 1).to(dtype)
    keep, num_keep, *_ = assert_exit_matches(backend, logits, 1.0, torch.arange(9), 9)
    assert int(num_keep) == 0


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # Triton's interpreter (numpy)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_early_exit_nan_rows(backend):
    logits, active, B = random_case(50, 20, seed=11)
    logits[3, 7] = float("nan")
    logits[10] = float("nan")
    logits[20, 0] = float("inf")  # softmax undefined: never confident either
    logits[30] = -float("inf")
    special = [3, 10, 20, 30]
    _, num_keep, _, steps = assert_exit_matches(backend, logits, 0.0, active, B)
    assert int(num_keep) == len(special)
    assert (steps[active[special]] == -1).all()
    keep, num_keep, out, steps = assert_exit_matches(backend, logits, -math.inf, active, B)
    assert int(num_keep) == 0 and (steps[active] == 3).all()
    assert torch.isnan(out[active[3], 7]) and torch.isnan(out[active[10]]).all()
    # a threshold that is -inf once cast to float32 lets every row exit too (not in float64)
    _, num_keep, _, _ = assert_exit_matches(backend, logits, -1e300, active, B)
    assert int(num_keep) == 0
    _, num_keep, _, _ = assert_exit_matches(backend, logits.double(), -1e300, active, B)
    assert int(num_keep) == len(special)


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_early_exit_threshold_tensor(backend):
    logits, active, B = random_case(40, 30, seed=3)
    thr = safe_threshold(logits, 0.5)
    for t in (torch.tensor(thr), torch.tensor(thr, dtype=torch.float64),
              torch.tensor(-math.inf)):
        assert_exit_matches(backend, logits, t, active, B)


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_early_exit_non_contiguous(backend):
    n, K, B = 33, 17, 50
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(K, n, generator=g) * 3).t()  # (n, K), column-major
    active = torch.randperm(B, generator=g)[:n].repeat_interleave(2)[::2]
    thr = safe_threshold(logits, 0.5)

    def outs():
        big = torch.full((B, 3 * K), SENTINEL)
        steps = torch.full((2 * B,), -1, dtype=torch.int64)
        return big[:, ::3], steps[::2]

    out_logits, exit_step = outs()
    assert not out_logits.is_contiguous() and not exit_step.is_contiguous()
    assert not active.is_contiguous()
    got = run_exit(backend, logits, thr, active, B, out_logits=out_logits, exit_step=exit_step)
    out_ref, step_ref = outs()
    ref = run_exit("reference", logits, thr, active, B, out_logits=out_ref, exit_step=step_ref)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert 0 < int(got[1]) < n
    # the storage around the strided outputs is untouched
    assert (out_logits._base[:, 1::3] == SENTINEL).all()
    assert (exit_step._base[1::2] == -1).all()


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_early_exit_keep_is_stable_partition(backend):
    logits, active, B = random_case(200, 5, seed=8)
    keep, num_keep, _, steps = run_exit(backend, logits, safe_threshold(logits, 0.4), active, B)
    nk = int(num_keep)
    assert sorted(keep.tolist()) == list(range(200))
    assert keep[:nk].tolist() == sorted(keep[:nk].tolist())
    assert keep[nk:].tolist() == sorted(keep[nk:].tolist())
    assert (steps[active[keep[:nk]]] == -1).all() and (steps[active[keep[nk:]]] == 3).all()


@needs_cpp
@pytest.mark.parametrize("n", [20000, 70001])
def test_early_exit_large_n_parallel_scan(n):
    logits, active, B = random_case(n, 3, seed=n)
    for fraction in (0.0, 0.3, 1.0):
        thr = {0.0: 1.5, 1.0: 0.0}.get(fraction) or safe_threshold(logits, fraction)
        assert_exit_matches("cpp", logits, thr, active, B)


@needs_cpp
def test_early_exit_default_backend_and_step_values():
    logits, active, B = random_case(10, 4, seed=1)
    out_logits = torch.zeros(B, 4)
    exit_step = torch.full((B,), 9, dtype=torch.int64)
    keep, num_keep = gfkernels.early_exit(logits, 0.0, active, out_logits, exit_step, -2)
    assert int(num_keep) == 0 and (exit_step[active] == -2).all()
    rest = torch.ones(B, dtype=torch.bool)
    rest[active] = False
    assert (exit_step[rest] == 9).all() and (out_logits[rest] == 0).all()


# ----------------------------------------------------------------------------------------
# gather_rows against the reference
# ----------------------------------------------------------------------------------------


def mixed_tensors(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    f32 = torch.randn(N, 1024, generator=g)
    f16 = torch.randn(N, 3, 7, generator=g).half().permute(0, 2, 1)  # non-contiguous
    i64 = torch.randint(-1000, 1000, (N,), generator=g)
    b = torch.rand(N, 5, generator=g) > 0.5
    c64 = torch.randn(N, 3, dtype=torch.complex64, generator=g)
    c128 = torch.randn(N, 2, 2, dtype=torch.complex128, generator=g)
    u8 = torch.randint(0, 255, (N, 4, 6, 5), dtype=torch.uint8, generator=g)[:, ::2, :, 1:]
    five = torch.randn(N, 4, 4, 4, 4, generator=g).double()[:, ::2, ::2, ::2, ::2]  # 4 dims
    rows_strided = torch.randn(2 * N, 6, generator=g).bfloat16()[::2]  # leading stride 12
    chlast = torch.randn(N, 8, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    empty = torch.empty(N, 0, 3)
    expanded = torch.randn(N, 1, generator=g).expand(N, 9)  # stride 0
    return [f32, f16, i64, b, c64, c128, u8, five, rows_strided, chlast, empty, expanded]


def assert_gather_matches(backend, tensors, index, n):
    got = gather_rows(tensors, index, n, backend=backend)
    ref = reference.gather_rows(tensors, index, n)
    assert len(got) == len(ref)
    for g_, r in zip(got, ref):
        assert g_.dtype == r.dtype and g_.shape == r.shape and g_.is_contiguous()
        torch.testing.assert_close(g_, r, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("N,n", [(1, 0), (1, 1), (10, 0), (10, 1), (10, 7), (10, 10), (64, 40)])
def test_gather_rows_mixed(backend, N, n):
    tensors = mixed_tensors(N, seed=N + n)
    g = torch.Generator().manual_seed(n)
    index = torch.randperm(N, generator=g)
    assert_gather_matches(backend, tensors, index, n)
    # repeated indices and an index longer than n
    index = torch.randint(0, N, (N + 3,), generator=g)
    assert_gather_matches(backend, tensors, index, min(n, N + 3))


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_gather_rows_with_early_exit(backend):
    """The loop's step: early_exit, then gather_rows by keep[:num_keep]."""
    B = 32
    logits, active, _ = random_case(B, 50, B=B, seed=4)
    h = torch.randn(B, 16)
    fmap = torch.randn(B, 8, 3, 3)
    keep, num_keep, _, _ = run_exit(backend, logits, safe_threshold(logits, 0.5), active, B)
    n = int(num_keep)
    h2, f2 = gather_rows([h, fmap], keep, n, backend=backend)
    torch.testing.assert_close(h2, h[keep[:n]], rtol=0, atol=0)
    torch.testing.assert_close(f2, fmap[keep[:n]], rtol=0, atol=0)
    # n as the 0-dim tensor itself
    h3, = gather_rows([h], keep, num_keep, backend=backend)
    torch.testing.assert_close(h3, h2, rtol=0, atol=0)


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_gather_rows_large(backend):
    N = 300 if backend == "triton" else 3000
    t = torch.randn(N, 2048, 3, 3)
    index = torch.randperm(N)
    assert_gather_matches(backend, [t, t[:, :, 1]], index, N // 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_rows_empty_list(backend):
    assert gather_rows([], torch.arange(3), 2, backend=backend) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_rows_gradient(backend):
    t = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    u = torch.randn(6, 2, 2, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([4, 1, 1, 0, 5])
    assert torch.autograd.gradcheck(
        lambda a, b: gather_rows([a, b], index, 4, backend=backend), (t, u))
    out = gather_rows([t, torch.arange(6)], index, 3, backend=backend)
    out[0].sum().backward()
    assert t.grad[1].eq(2).all() and t.grad[4].eq(1).all() and t.grad[2].eq(0).all()


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------


def good_args(n=4, K=3, B=6):
    return dict(logits=torch.randn(n, K), threshold=0.5, active=torch.arange(n),
                out_logits=torch.zeros(B, K), exit_step=torch.zeros(B, dtype=torch.int64),
                step=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change,error,match", [
    (dict(logits=torch.randn(4)), ValueError, "logits must be a 2-D"),
    (dict(logits=torch.randint(0, 3, (4, 3))), TypeError, "logits must be float16"),
    (dict(logits=torch.randn(4, 0), out_logits=torch.zeros(6, 0)), ValueError, "K > 0"),
    (dict(active=torch.arange(5)), ValueError, "active must be \\(n,\\)"),
    (dict(active=torch.arange(4, dtype=torch.int32)), TypeError, "active must be an int64"),
    (dict(active=torch.tensor([0, 1, 6, 2])), IndexError, "active"),
    (dict(active=torch.tensor([0, -1, 2, 3])), IndexError, "active"),
    (dict(out_logits=torch.zeros(6, 4)), ValueError, "out_logits must be \\(B, K\\)"),
    (dict(out_logits=torch.zeros(6)), ValueError, "out_logits must be \\(B, K\\)"),
    (dict(out_logits=torch.zeros(6, 3, dtype=torch.float64)), TypeError, "out_logits must have"),
    (dict(exit_step=torch.zeros(5, dtype=torch.int64)), ValueError, "exit_step must be \\(B,\\)"),
    (dict(exit_step=torch.zeros(6)), TypeError, "exit_step must be an int64"),
    (dict(threshold=torch.tensor([0.5])), ValueError, "threshold must be a float or a 0-dim"),
    (dict(threshold=torch.tensor(1)), TypeError, "threshold must be a floating"),
    (dict(threshold=float("nan")), ValueError, "threshold must not be NaN"),
    (dict(threshold="0.5"), TypeError, "threshold"),
    (dict(step=1.0), TypeError, "step must be an int"),
    (dict(active=torch.arange(4, device="meta")), ValueError, "active must be on the logits'"),
    (dict(exit_step=torch.zeros(6, dtype=torch.int64, device="meta")), ValueError,
     "exit_step must be on"),
    (dict(threshold=torch.tensor(0.5, device="meta")), ValueError, "threshold must be on"),
])
def test_early_exit_errors(backend, change, error, match):
    args = good_args()
    args.update(change)
    with pytest.raises(error, match=match):
        early_exit(**args, backend=backend)


def test_early_exit_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        early_exit(**good_args(), backend="numpy")


@needs_cpp
def test_compiled_op_checks_directly():
    """The registered ops check their arguments too (for callers of torch.ops)."""
    a = good_args()
    ops = torch.ops.gfkernels
    thr = torch.tensor(0.5)
    with pytest.raises(IndexError, match="active values must lie in"):
        ops.early_exit(a["logits"], thr, torch.tensor([0, 1, 9, 2]), a["out_logits"],
                       a["exit_step"], 1)
    with pytest.raises(ValueError, match="exit_step must be"):
        ops.early_exit(a["logits"], thr, a["active"], a["out_logits"],
                       torch.zeros(2, dtype=torch.int64), 1)
    with pytest.raises(TypeError, match="out_logits must have"):
        ops.early_exit(a["logits"], thr, a["active"], a["out_logits"].double(),
                       a["exit_step"], 1)
    with pytest.raises(IndexError, match="index values must lie in"):
        ops.gather_rows([torch.randn(3, 2)], torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match="n must lie in"):
        ops.gather_rows([torch.randn(3, 2)], torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="leading size"):
        ops.gather_rows([torch.randn(3, 2), torch.randn(4)], torch.tensor([0, 1]), 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tensors,index,n,error,match", [
    (torch.randn(5, 2), torch.arange(5), 2, TypeError, "tensors must be a list"),
    ([torch.randn(5, 2), 3], torch.arange(5), 2, TypeError, "tensors\\[1\\] must be a tensor"),
    ([torch.randn(5, 2)], torch.arange(5, dtype=torch.int32), 2, TypeError, "index must be an int64"),
    ([torch.randn(5, 2)], torch.arange(5)[None], 2, ValueError, "index must be 1-D"),
    ([torch.randn(5, 2)], torch.arange(5), 6, ValueError, "n must lie in \\[0, 5\\]"),
    ([torch.randn(5, 2)], torch.arange(5), -1, ValueError, "n must lie in"),
    ([torch.randn(5, 2)], torch.arange(5), 2.0, TypeError, "n must be an int"),
    ([torch.randn(5, 2)], torch.arange(5), torch.tensor(2.0), TypeError, "n must be an int"),
    ([torch.randn(5, 2), torch.randn(4, 2)], torch.arange(4), 2, ValueError,
     "tensors\\[1\\] has leading size 4"),
    ([torch.randn(5, 2), torch.tensor(1.0)], torch.arange(4), 2, ValueError,
     "tensors\\[1\\] must have a leading"),
    ([torch.randn(5, 2)], torch.tensor([0, 5, 1]), 2, IndexError, "index values must lie in"),
    ([torch.randn(5, 2)], torch.tensor([-1, 0]), 1, IndexError, "index"),
    ([torch.randn(5, 2, device="meta")], torch.arange(5), 2, ValueError,
     "tensors\\[0\\] must be on the index's device"),
])
def test_gather_rows_errors(backend, tensors, index, n, error, match):
    with pytest.raises(error, match=match):
        gather_rows(tensors, index, n, backend=backend)


def test_gather_rows_index_out_of_range_past_n_is_ignored():
    index = torch.tensor([1, 0, 99])
    for backend in BACKENDS:
        out, = gather_rows([torch.arange(5)], index, 2, backend=backend)
        assert out.tolist() == [1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_rows_strided_index(backend):
    """An index with a stride (index[::2], a column of a matrix) is read with it."""
    tensors = mixed_tensors(12, seed=3)
    wide = torch.randperm(12, generator=torch.Generator().manual_seed(2)).repeat(2)
    for index in (wide[::2], torch.stack([wide[:12], wide[12:]], dim=1)[:, 1]):
        assert not index.is_contiguous()
        assert_gather_matches(backend, tensors, index, 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_early_exit_ties_at_the_threshold(backend, dtype):
    """Rows of K equal logits have confidence exactly 1 / K (every exp is exp(0) = 1, every sum
    an integer), so a threshold of 1 / K rounded to the confidence's dtype is a tie, and a tie
    exits on every backend: the division 1 / sum must be correctly rounded."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for K in (3, 6, 7, 10, 11, 13, 100, 1000, 1001):
        logits = torch.full((4, K), 0.75).to(dtype)
        logits[1] = -2.5
        thr = torch.tensor(1.0 / K, dtype=acc)
        keep, num_keep, out_logits, exit_step = run_exit(backend, logits, thr, torch.arange(4),
                                                         4)
        assert int(num_keep) == 0, (K, backend)
        assert (exit_step == 3).all()
        above = torch.nextafter(thr, torch.tensor(2.0, dtype=acc))
        keep, num_keep, *_ = run_exit(backend, logits, above, torch.arange(4), 4)
        assert int(num_keep) == 4, (K, backend)


needs_triton = pytest.mark.skipif("triton" not in BACKENDS,
                                  reason="needs triton on CPU tensors (TRITON_INTERPRET=1)")


@needs_triton
def test_triton_early_exit_never_writes_outside_its_outputs():
    """The kernels (what runs on a GPU, where values are not checked on the host) with active
    values out of range: the rows next to out_logits and exit_step in memory stay untouched (a
    device assert fires in Triton's debug mode); the decision and keep are unaffected. The op on
    CPU tensors refuses those values first, as every CPU backend does."""
    from gfkernels.triton.early_exit import early_exit_kernels

    n, K, B = 4, 3, 5
    logits = torch.full((n, K), 1.0)
    logits[:, 0] = 30.0  # confident: every row exits
    base_logits = torch.full((B + 2, K), SENTINEL)
    base_steps = torch.full((B + 2,), -1, dtype=torch.int64)
    out_logits, exit_step = base_logits[1:B + 1], base_steps[1:B + 1]
    active = torch.tensor([0, B, -1, 2])
    with pytest.raises(IndexError, match="active values must lie in"):
        backends.TABLE["triton"].ops.early_exit(logits, torch.tensor(0.5, dtype=torch.float64), active,
                                                out_logits, exit_step, 7)
    keep, num_keep = early_exit_kernels(logits, torch.tensor(0.5, dtype=torch.float64), active, out_logits,
                                        exit_step, 7)
    assert int(num_keep) == 0 and keep.tolist() == [0, 1, 2, 3]
    assert (base_logits[0] == SENTINEL).all() and (base_logits[B + 1] == SENTINEL).all()
    assert base_steps[0] == -1 and base_steps[B + 1] == -1
    assert exit_step.tolist() == [7, -1, 7, -1, -1]


@needs_triton
def test_triton_gather_rows_never_reads_outside_its_tensors():
    """The kernels (unchecked, as on a GPU) with index values out of range: rows outside the
    tensor are not read (their output rows are zero; a device assert fires in Triton's debug
    mode). The op on CPU tensors refuses those values first."""
    from gfkernels.triton.gather_rows import gather_rows_kernels

    base = torch.arange(1, 7 * 4 + 1, dtype=torch.float32).reshape(7, 4)
    t = base[1:6]  # rows 0 and 6 of base lie outside t
    with pytest.raises(IndexError, match="index values must lie in"):
        backends.TABLE["triton"].ops.gather_rows([t], torch.tensor([4, 5, -1, 0]), 4)
    out, = gather_rows_kernels([t], torch.tensor([4, 5, -1, 0]), 4)
    torch.testing.assert_close(out[0], t[4])
    torch.testing.assert_close(out[3], t[0])
    assert (out[1] == 0).all() and (out[2] == 0).all()


# ----------------------------------------------------------------------------------------
# opcheck and torch.compile
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("n,K,thr", [(0, 5, 0.5), (1, 1, 1.0), (12, 10, 0.4), (12, 10, -math.inf)])
def test_opcheck_early_exit(backend, n, K, thr):
    logits, active, B = random_case(n, K, seed=1)
    args = (logits, torch.tensor(thr, dtype=torch.float64), active, torch.zeros(B, K),
            torch.full((B,), -1, dtype=torch.int64), 2)
    torch.library.opcheck(backends.TABLE[backend].ops.early_exit.default, args)


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("grad", [False, True])
def test_opcheck_gather_rows(backend, grad):
    tensors = [torch.randn(8, 4, requires_grad=grad), torch.randn(8, 2, 3).transpose(1, 2),
               torch.arange(8)]
    op = backends.TABLE[backend].ops.gather_rows.default
    torch.library.opcheck(op, (tensors, torch.tensor([3, 1, 7, 0]), 3))
    torch.library.opcheck(op, (tensors, torch.tensor([3, 1, 7, 0]), 0))


@needs_cpp
def test_torch_compile_step():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="inductor")
    def decide(logits, active, out_logits, exit_step, threshold):
        keep, num_keep = gfkernels.early_exit(logits * 1.0, threshold, active, out_logits,
                                              exit_step, 2)
        return keep, num_keep

    @torch.compile(fullgraph=True, backend="inductor", dynamic=True)
    def compact(h, fmap, keep, n):
        h2, f2 = gfkernels.gather_rows([h, fmap], keep, n)
        return h2 + 1, f2

    B, K = 24, 30
    logits, active, _ = random_case(B, K, B=B, seed=6)
    h, fmap = torch.randn(B, 16), torch.randn(B, 4, 3, 3)
    thr = safe_threshold(logits, 0.5)
    for threshold in (thr, torch.tensor(thr)):
        out_logits, exit_step = torch.zeros(B, K), torch.full((B,), -1, dtype=torch.int64)
        keep, num_keep = decide(logits, active, out_logits, exit_step, threshold)
        ref = run_exit("reference", logits, thr, active, B, step=2)
        torch.testing.assert_close(keep, ref[0], rtol=0, atol=0)
        assert int(num_keep) == int(ref[1])
        torch.testing.assert_close(exit_step, ref[3], rtol=0, atol=0)
        torch.testing.assert_close(out_logits[exit_step == 2], ref[2][exit_step == 2],
                                   rtol=0, atol=0)
        for n in (int(num_keep), 3):
            h2, f2 = compact(h, fmap, keep, n)
            torch.testing.assert_close(h2, h[keep[:n]] + 1)
            torch.testing.assert_close(f2, fmap[keep[:n]], rtol=0, atol=0)


@needs_cpp
def test_torch_compile_full_step_with_scalar_capture():
    """The whole step in one graph: num_keep read inside (an unbacked size)."""
    torch._dynamo.reset()

    def step(logits, active, out_logits, exit_step, h):
        keep, num_keep = gfkernels.early_exit(logits, 0.6, active, out_logits, exit_step, 1)
        n = num_keep.item()
        torch._check(n >= 0)
        torch._check(n <= keep.shape[0])
        h2, = gfkernels.gather_rows([h], keep, n)
        return h2 * 2

    B, K = 16, 8
    logits, active, _ = random_case(B, K, B=B, seed=9)
    h = torch.randn(B, 5)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(step, fullgraph=True)
        got = compiled(logits, active, torch.zeros(B, K),
                       torch.zeros(B, dtype=torch.int64), h)
    want = step(logits, active, torch.zeros(B, K), torch.zeros(B, dtype=torch.int64), h)
    torch.testing.assert_close(got, want)
