"""The engine and the crop ops make no host sync but the one per step they mean to make.

    python -m bench.gpu_sync_check --device cuda     # under torch.cuda.set_sync_debug_mode("error")
    python -m bench.gpu_sync_check --device cpu      # the same calls (nothing to sync with): the dry run

On a GPU every call below runs under ``torch.cuda.set_sync_debug_mode("error")``, where any
operation that waits for the GPU raises. The engine's one sync per step is
``gfnet.inference.host_count`` (``int(num_keep)``): it is wrapped to count its calls and to lift
the debug mode for its read alone. Checked, for each backend usable on the device:
  - gfkernels.crop_resize (glance: bicubic with mean/std from uint8; focus: integer boxes with
    batch_index), early_exit (host float threshold and device tensor threshold), gather_rows:
    no sync at all;
  - the model's glance and focus patches: no sync;
  - gfnet.inference.dynamic_inference (digits preset, random weights, thresholds splitting the
    batch over every step): exactly one counted sync per step run, and no other.
Each case runs once first outside the debug mode (Triton compiles, caches fill). Exits non-zero
with the failing case and the operation that synchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback

import torch

import gfkernels
from gfnet import inference


@contextlib.contextmanager
def sync_debug(device: torch.device, mode):
    """torch.cuda.set_sync_debug_mode(mode) inside the block on a GPU (nothing on a CPU)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class CountedSyncs:
    """Wraps gfnet.inference.host_count: counts the engine's intended syncs and lets each one
    through the debug mode."""

    def __init__(self, device: torch.device):
        self.device, self.calls = device, 0
        self._original = inference.host_count

    def __enter__(self):
        def counted(num_keep):
            self.calls += 1
            with sync_debug(self.device, 0):
                return self._original(num_keep)

        inference.host_count = counted
        return self

    def __exit__(self, *exc):
        inference.host_count = self._original


def _engine_case(device: torch.device, backend: str):
    from gfnet.exits import thresholds_for_fractions
    from gfnet.config import build_config
    from gfnet.models import build_model

    cfg = build_config("digits")
    torch.manual_seed(0)
    model = build_model(cfg.model, kernel_backend=backend).to(device).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 128, 128), generator=g, dtype=torch.uint8).to(device)
    conf = inference.confidences(inference.anytime_inference(model, images).logits)
    thresholds = thresholds_for_fractions(conf, (0.5, 0.3, 0.2))

    def run():
        with CountedSyncs(device) as syncs:
            result = inference.dynamic_inference(model, images, thresholds, backend=backend)
        steps_run = sum(1 for r in result.reached() if r > 0)
        assert syncs.calls == steps_run, f"{syncs.calls} counted syncs for {steps_run} steps"
        return f"{steps_run} steps, {syncs.calls} syncs (one per step), exits {result.exit_counts}"

    return run


def _op_cases(device: torch.device, backend: str):
    from gfnet.models.patches import focus_patches, glance_patches

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 64, 80), generator=g, dtype=torch.uint8).to(device)
    actions = torch.rand(6, 2, generator=g).to(device)
    batch_index = torch.tensor([7, 1, 0, 3, 3, 5], device=device)
    boxes = gfkernels.focus_boxes(actions, (64, 80), 24)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    logits = torch.randn(6, 10, generator=g).to(device)
    out_logits = torch.zeros(8, 10, device=device)
    exit_step = torch.zeros(8, dtype=torch.int64, device=device)
    device_threshold = torch.tensor(0.2, device=device)
    state = [batch_index, torch.randn(6, 16, generator=g).to(device)]
    return {
        "crop_resize glance (bicubic, uint8, mean/std)": lambda: gfkernels.crop_resize(
            images, boxes, 32, mode="bicubic", align_corners=True, mean=mean, std=std,
            batch_index=batch_index, backend=backend),
        "crop_resize focus (integer boxes, batch_index)": lambda: gfkernels.crop_resize(
            images, boxes, 24, batch_index=batch_index, mean=mean, std=std, backend=backend),
        "glance_patches": lambda: glance_patches(images, 32, mean=mean, std=std, backend=backend),
        "focus_patches": lambda: focus_patches(images, actions, 24, batch_index=batch_index,
                                               mean=mean, std=std, backend=backend),
        "early_exit (host threshold)": lambda: gfkernels.early_exit(
            logits, 0.2, torch.arange(6, device=device), out_logits, exit_step, 2, backend=backend),
        "early_exit (device threshold)": lambda: gfkernels.early_exit(
            logits, device_threshold, torch.arange(6, device=device), out_logits, exit_step, 2,
            backend=backend),
        "gather_rows": lambda: gfkernels.gather_rows(state, torch.arange(6, device=device), 4,
                                                     backend=backend),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible", file=sys.stderr)
        return 2
    backends = [b for b in gfkernels.backends.available_names(device) if b != "reference"]
    if not backends:
        print(f"no compiled or Triton backend on {device}", file=sys.stderr)
        return 2
    failures = 0
    with torch.inference_mode():
        for backend in backends:
            cases = dict(_op_cases(device, backend))
            cases["dynamic_inference"] = _engine_case(device, backend)
            for name, fn in cases.items():
                fn()  # warm-up outside the debug mode: compiles, caches
                try:
                    with sync_debug(device, "error"):
                        note = fn()
                except Exception:  # the operation that synchronised, with its traceback
                    failures += 1
                    print(f"FAIL {backend}: {name}\n{traceback.format_exc()}")
                    continue
                print(f"ok   {backend}: {name}" + (f": {note}" if isinstance(note, str) else ""))
    mode = 'under set_sync_debug_mode("error")' if device.type == "cuda" else "(CPU: no syncs to see)"
    print(f"{failures} failure(s) {mode}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
