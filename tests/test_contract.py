"""One validation contract on every backend (gfkernels/contract.py, docs/OPS.md "Errors"): bad
values raise the same exception type everywhere, through the public API and through each
backend's raw op; the output-size limit is one number; and a bounded fuzz test drawing random
valid and invalid calls of the three ops."""

from __future__ import annotations

import math
import random
import time

import pytest
import torch

import gfkernels
from gfkernels import backends, contract, reference

from .helpers import CPU_BACKENDS, OP_BACKENDS, assert_close_to_reference

IMAGES = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).reshape(2, 3, 8, 10) / 100


def _crop(backend, **kw):
    args = dict(images=IMAGES, boxes=torch.tensor([[0.0, 0.0, 10.0, 8.0], [1.0, 2.0, 5.0, 6.0]]),
                size=(4, 5))
    args.update(kw)
    return gfkernels.crop_resize(args.pop("images"), args.pop("boxes"), args.pop("size"), backend=backend, **args)


def _exit_args(n=3, B=5, K=4):
    logits = torch.randn(n, K, generator=torch.Generator().manual_seed(0))
    return logits, torch.arange(n), torch.zeros(B, K), torch.zeros(B, dtype=torch.int64)


# ---------------------------------------------------------------------- the size limit
def test_the_limit_is_one_number():
    from gfkernels import _C

    assert _C.max_output_elements_per_box == contract.MAX_OUTPUT_ELEMENTS_PER_BOX == 2**31 - 1 - 2**20


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_huge_output_is_refused_before_allocating(backend):
    """(100000, 100000) used to make the cpp kernel allocate hundreds of GB: a ValueError now,
    with one message on every backend, through the API and the raw op."""
    started = time.perf_counter()
    message = r"size \(100000, 100000\) with C = 3 channels is 30000000000 output elements per box, over the limit"
    with pytest.raises(ValueError, match=message):
        _crop(backend, size=(100000, 100000))
    op = backends.TABLE[backend].op("crop_resize")
    with pytest.raises(ValueError, match=message):
        op(IMAGES, torch.zeros(2, 4), None, [100000, 100000], "bilinear", False, "border", None, None,
           torch.float32)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_largest_allowed_output_is_not_refused_by_the_checks(backend):
    """At the limit exactly, the checks pass (an empty batch of boxes allocates nothing)."""
    h = contract.MAX_OUTPUT_ELEMENTS_PER_BOX // 3
    out = gfkernels.crop_resize(IMAGES[:0], torch.zeros(0, 4), (h, 1), backend=backend)
    assert out.shape == (0, 3, h, 1)


# ---------------------------------------------------------------------- bad values
BAD_CROPS = {
    "nan box": (dict(boxes=torch.tensor([[0.0, math.nan, 10.0, 8.0], [1, 2, 5, 6]])), ValueError),
    "inf box": (dict(boxes=torch.tensor([[0.0, 0.0, math.inf, 8.0], [1, 2, 5, 6]])), ValueError),
    "nan mean": (dict(mean=[math.nan]), ValueError),
    "inf mean": (dict(mean=[0.0, math.inf, 0.0]), ValueError),
    "inf std": (dict(std=[math.inf]), ValueError),
    "zero std": (dict(std=[1.0, 0.0, 1.0]), ValueError),
    "batch_index out of range": (dict(batch_index=torch.tensor([0, 2])), IndexError),
}


@pytest.mark.parametrize("case", sorted(BAD_CROPS))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_crop_values_raise_the_same_type_everywhere(backend, case):
    kw, error = BAD_CROPS[case]
    with pytest.raises(error):
        _crop(backend, **kw)
    call = dict(boxes=torch.tensor([[0.0, 0.0, 10.0, 8.0], [1.0, 2.0, 5.0, 6.0]]), batch_index=None,
                mean=None, std=None)
    call.update(kw)
    op = backends.TABLE[backend].op("crop_resize")
    with pytest.raises(error):
        op(IMAGES, call["boxes"], call["batch_index"], [4, 5], "bilinear", False, "border", call["mean"],
           call["std"], torch.float32)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_huge_finite_boxes_match_the_reference(backend, align_corners):
    """[-1e308, 0, 1e308, 4]: the box's width overflows float64 (0 * inf is NaN at the first
    position); every backend reads the border there, the reference included."""
    boxes = torch.tensor([[-1e308, 0.0, 1e308, 4.0], [0.0, -1e308, 3.0, 1e308]], dtype=torch.float64)
    images = IMAGES.double()
    expected = reference.crop_resize(images, boxes, (3, 4), align_corners=align_corners)
    assert torch.isfinite(expected).all()
    actual = gfkernels.crop_resize(images, boxes, (3, 4), align_corners=align_corners, backend=backend)
    assert_close_to_reference(actual, expected, torch.float64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_early_exit_values_raise_the_same_type_everywhere(backend):
    logits, active, out, steps = _exit_args()
    op = backends.TABLE[backend].op("early_exit")
    cases = [
        (ValueError, dict(threshold=math.nan)),
        (ValueError, dict(threshold=torch.tensor(math.nan))),
        (ValueError, dict(threshold=torch.tensor(math.nan, dtype=torch.float64))),
        (ValueError, dict(active=torch.tensor([0, 2, 2]))),
        (IndexError, dict(active=torch.tensor([0, 1, 5]))),
        (TypeError, dict(step=True)),
        (TypeError, dict(step=1.0)),
    ]
    for error, kw in cases:
        args = dict(logits=logits, threshold=0.5, active=active, out_logits=out.clone(), exit_step=steps.clone(),
                    step=1)
        args.update(kw)
        with pytest.raises(error):
            gfkernels.early_exit(*args.values(), backend=backend)
        if isinstance(args["threshold"], float) and not math.isnan(args["threshold"]):
            args["threshold"] = torch.tensor(args["threshold"], dtype=torch.float64)
        elif isinstance(args["threshold"], float):
            continue  # a raw op takes a tensor: the float case is the API's
        if kw.get("step") is True or isinstance(kw.get("step"), float):
            if backend != "reference":
                continue  # the dispatcher turns a Python bool/float into the schema's int first
        with pytest.raises(error):
            op(*args.values())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gather_rows_n_must_be_an_int(backend):
    x = torch.arange(6.0).reshape(3, 2)
    index = torch.tensor([2, 0, 1])
    for n in (True, torch.tensor(1.0), 1.0):
        with pytest.raises(TypeError, match="n must be an int"):
            gfkernels.gather_rows([x], index, n, backend=backend)
    with pytest.raises(TypeError, match="n must be an int"):
        reference.gather_rows([x], index, True)
    assert torch.equal(gfkernels.gather_rows([x], index, torch.tensor(2), backend=backend)[0], x[[2, 0]])


@pytest.mark.parametrize("backend", OP_BACKENDS + ["reference"])
def test_raw_ops_refuse_a_tensor_on_the_meta_device(backend):
    """A meta tensor among real ones used to dispatch to the fake kernel, which returned
    uninitialised memory (num_keep = 94556880540080): a ValueError now."""
    op = backends.TABLE[backend].ops
    logits, active, out, steps = _exit_args()
    thr = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="must be on the logits' device"):
        op.early_exit(logits, thr, active.to("meta"), out, steps, 1)
    with pytest.raises(ValueError, match="must be on the images' device"):
        op.crop_resize(IMAGES, torch.zeros(2, 4, device="meta"), None, [4, 5], "bilinear", False, "border",
                       None, None, torch.float32)
    with pytest.raises(ValueError, match="must be on the index's device"):
        op.gather_rows([torch.zeros(3, 2, device="meta")], torch.tensor([0, 1, 2]), 2)


# ---------------------------------------------------------------------- float64 -> bfloat16 (Triton)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_images_to_bfloat16(backend, mode, generator):
    """Triton's interpreter turned float64 into bfloat16 wrongly (all zeros): the kernel goes
    through float32. Every backend within 8 bfloat16 ulps of the reference."""
    images = torch.rand(2, 3, 9, 11, dtype=torch.float64, generator=generator) * 4 - 2
    boxes = torch.tensor([[0.5, 1.0, 9.5, 8.0], [0.0, 0.0, 11.0, 9.0]], dtype=torch.float64)
    expected = reference.crop_resize(images, boxes, (5, 6), mode=mode, out_dtype=torch.bfloat16)
    actual = gfkernels.crop_resize(images, boxes, (5, 6), mode=mode, out_dtype=torch.bfloat16, backend=backend)
    assert actual.dtype == torch.bfloat16 and actual.abs().sum() > 0
    assert_close_to_reference(actual, expected, torch.bfloat16)


# ---------------------------------------------------------------------- fuzz
def _random_crop_call(rng: random.Random):
    """Keyword arguments of a crop_resize call, valid or with one bad value; and the exception
    type a bad one must raise (None: valid)."""
    N, C, H, W = rng.randint(1, 3), rng.choice([1, 3]), rng.randint(1, 9), rng.randint(1, 9)
    dtype = rng.choice([torch.uint8, torch.float32, torch.float64])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    images = (torch.randint(0, 256, (N, C, H, W), generator=g, dtype=torch.uint8) if dtype == torch.uint8
              else torch.rand(N, C, H, W, generator=g, dtype=dtype))
    B = rng.randint(0, 4)
    boxes = (torch.rand(B, 4, generator=g, dtype=torch.float64) * 2.5 - 0.75) * torch.tensor([W, H, W, H])
    boxes = boxes.to(rng.choice([torch.float32, torch.float64]))
    mode = rng.choice(["bilinear", "bicubic", "nearest"])
    kw = dict(images=images, boxes=boxes, size=(rng.randint(1, 6), rng.randint(1, 6)),
              batch_index=torch.randint(0, N, (B,), generator=g), mode=mode,
              align_corners=mode != "nearest" and rng.random() < 0.5,
              padding_mode=rng.choice(["border", "zeros"]), mean=rng.choice([None, [0.25], [0.1] * C]),
              std=rng.choice([None, [0.5], [2.0] * C]), out_dtype=rng.choice([None, torch.float32, torch.float64]))
    bad = rng.random() < 0.4
    if not bad:
        return kw, None
    kind = rng.choice(["nan box", "inf box", "nan mean", "inf std", "zero std", "index", "size", "huge"])
    if kind in ("nan box", "inf box") and B:
        kw["boxes"] = boxes.clone()
        kw["boxes"][rng.randrange(B), rng.randrange(4)] = math.nan if kind == "nan box" else -math.inf
        return kw, ValueError
    if kind == "nan mean":
        return {**kw, "mean": [math.nan]}, ValueError
    if kind == "inf std":
        return {**kw, "std": [math.inf] * C}, ValueError
    if kind == "zero std":
        return {**kw, "std": [0.0]}, ValueError
    if kind == "index" and B:
        kw["batch_index"] = kw["batch_index"].clone()
        kw["batch_index"][rng.randrange(B)] = rng.choice([-1, N])
        return kw, IndexError
    if kind == "size":
        return {**kw, "size": (0, 3)}, ValueError
    return {**kw, "size": (100000, 100000)}, ValueError


def _random_exit_call(rng: random.Random):
    n, B, K = rng.randint(0, 5), rng.randint(5, 8), rng.randint(1, 5)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    logits = torch.randn(n, K, generator=g, dtype=rng.choice([torch.float32, torch.float64])) * 3
    active = torch.randperm(B, generator=g)[:n]
    threshold = rng.choice([0.3, 0.6, 0.99, -math.inf, torch.tensor(0.5)])
    kw = dict(logits=logits, threshold=threshold, active=active, out_logits=torch.zeros(B, K, dtype=logits.dtype),
              exit_step=torch.zeros(B, dtype=torch.int64), step=rng.randint(1, 4))
    if rng.random() >= 0.4:
        return kw, None
    kind = rng.choice(["nan", "nan tensor", "duplicate", "range", "step"])
    if kind == "nan":
        return {**kw, "threshold": math.nan}, ValueError
    if kind == "nan tensor":
        return {**kw, "threshold": torch.tensor(math.nan)}, ValueError
    if kind == "duplicate" and n >= 2:
        return {**kw, "active": torch.cat([active[:-1], active[:1]])}, ValueError
    if kind == "range" and n >= 1:
        return {**kw, "active": torch.cat([active[:-1], torch.tensor([B])])}, IndexError
    return {**kw, "step": True}, TypeError


def _random_gather_call(rng: random.Random):
    N = rng.randint(1, 6)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    tensors = [torch.randn(N, rng.randint(1, 3), generator=g), torch.randint(0, 9, (N,), generator=g)]
    index = torch.randint(0, N, (rng.randint(0, 6),), generator=g)
    kw = dict(tensors=tensors, index=index, n=rng.randint(0, index.numel()))
    if rng.random() >= 0.4:
        return kw, None
    kind = rng.choice(["bool", "float tensor", "range", "n"])
    if kind == "bool":
        return {**kw, "n": True}, TypeError
    if kind == "float tensor":
        return {**kw, "n": torch.tensor(1.0)}, TypeError
    if kind == "range" and kw["n"] >= 1:
        index = index.clone()
        index[0] = N
        return {**kw, "index": index}, IndexError
    return {**kw, "n": index.numel() + 1}, ValueError


def _outcome(fn):
    try:
        return fn(), None
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        return None, e


def test_fuzz_every_backend_agrees_with_the_reference_or_raises_the_same_type():
    """Random calls of the three ops for up to ~40 s: a valid call gives the reference's answer
    on every CPU backend (cpp, interpreted Triton), an invalid one the same exception type."""
    rng = random.Random(21)
    deadline = time.monotonic() + 40
    calls = {"crop_resize": 0, "early_exit": 0, "gather_rows": 0}
    while time.monotonic() < deadline and sum(calls.values()) < 600:
        op = rng.choice(sorted(calls))
        calls[op] += 1
        if op == "crop_resize":
            kw, error = _random_crop_call(rng)
            size = kw.pop("size")
            images, boxes = kw.pop("images"), kw.pop("boxes")
            results = {b: _outcome(lambda b=b: gfkernels.crop_resize(images, boxes, size, backend=b, **kw))
                       for b in CPU_BACKENDS}
        elif op == "early_exit":
            kw, error = _random_exit_call(rng)

            def run(b, kw=kw):
                out, steps = kw["out_logits"].clone(), kw["exit_step"].clone()
                keep, num_keep = gfkernels.early_exit(kw["logits"], kw["threshold"], kw["active"], out, steps,
                                                      kw["step"], backend=b)
                return keep, num_keep, out, steps

            results = {b: _outcome(lambda b=b: run(b)) for b in CPU_BACKENDS}
        else:
            kw, error = _random_gather_call(rng)
            results = {b: _outcome(lambda b=b: gfkernels.gather_rows(kw["tensors"], kw["index"], kw["n"], backend=b))
                       for b in CPU_BACKENDS}
        where = f"{op} call {calls[op]} ({kw if error is None else error.__name__})"
        expected, raised = results["reference"]
        if error is not None:
            for b, (_, e) in results.items():
                assert type(e) is error, f"{where}: {b} gave {e!r}"
            continue
        assert raised is None, f"{where}: the reference refused a valid call: {raised!r}"
        for b, (value, e) in results.items():
            assert e is None, f"{where}: {b} refused a valid call: {e!r}"
            if op == "crop_resize":
                assert_close_to_reference(value, expected, value.dtype)
            elif op == "early_exit":
                keep, num_keep, out, steps = value
                assert int(num_keep) == int(expected[1]), where
                assert torch.equal(keep, expected[0]) and torch.equal(steps, expected[3]), where
                assert torch.equal(out, expected[2]), where
            else:
                assert all(torch.equal(a, r) for a, r in zip(value, expected)), where
    assert min(calls.values()) >= 20
