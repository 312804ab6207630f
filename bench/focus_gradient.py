"""Does the crop's location gradient point at the object? A diagnostic for the differentiable
policy training (``optim.policy_training=differentiable``).

    .venv/bin/python -m bench.focus_gradient RUN_OR_CHECKPOINT [--images 256] [--threads 2]

For a run's model (its last stage, or the checkpoint named) on the validation images of a data
set that knows where its object is (``object_box``: the cluttered digits' digit), locations
being actions in [0, 1]^2 (the patch's top-left at ``a * (H - P)``):

- the policy: the spread (standard deviation over the images) of its mean locations at step 2,
  and their distance to the object-centred location;
- the step-2 loss (cross-entropy of the classifier) at the policy's locations, at the
  object-centred ones, and at the best point of an 11 x 11 grid;
- alignment: the cosine between -d loss / d location, the gradient crop_resize passes back
  through its box (``continuous_focus_boxes``), and the direction from the location to the
  object-centred one, at locations drawn uniformly within 0.1, 0.2 and 0.4 of it; and the same
  for the gradient averaged over 16 Gaussian draws around each location (sigma 0.1 and 0.2),
  which is what a reparameterised sampling of the location would follow.

A mean cosine near 1: the gradient leads a location to the object; near 0: it carries no
direction, and a policy trained on it cannot learn where to look from it.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from gfnet.checkpoint import load_checkpoint_model, resolve_checkpoint
from gfnet.data import build_datasets

OFFSETS = (0.1, 0.2, 0.4)
SIGMAS = (0.1, 0.2)
DRAWS = 16
GRID = 11


def object_centred_actions(object_boxes: torch.Tensor, image_hw: tuple[int, int], patch: int) -> torch.Tensor:
    """The actions (n, 2) = (row, column) whose patch is centred on each object box (x1, y1, x2, y2)."""
    h, w = image_hw
    cx = (object_boxes[:, 0] + object_boxes[:, 2]) / 2
    cy = (object_boxes[:, 1] + object_boxes[:, 3]) / 2
    return torch.stack(((cy - patch / 2) / (h - patch), (cx - patch / 2) / (w - patch)), 1).clamp(0.0, 1.0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder (its last stage) or a GFNet checkpoint")
    ap.add_argument("--images", type=int, default=256, help="validation images to probe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the probed locations")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.run)
    model, cfg, _ = load_checkpoint_model(path, "cpu")
    if model.max_steps < 2:
        raise SystemExit(f"{path}: a model of {model.max_steps} step has no focus step to probe")
    val = build_datasets(cfg, ("val",))["val"]
    if not hasattr(val, "object_box"):
        raise SystemExit(f"{path}: its data set ({cfg.data.dataset}) does not say where its objects are "
                         "(object_box); the probe needs it")
    n = min(args.images, len(val))
    images = torch.stack([val[i][0] for i in range(n)])
    labels = torch.tensor([int(val[i][1]) for i in range(n)])
    target = object_centred_actions(torch.tensor([val.object_box(i) for i in range(n)], dtype=torch.float32),
                                    tuple(images.shape[-2:]), model.patch_size)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        glance = model.glance_step(images)
        mean, _, _ = model.policy(glance.state.fmap.float(), glance.state.policy_h)

    def losses(actions: torch.Tensor) -> torch.Tensor:
        out = model.focus_step(images, glance.state, policy="given", action=actions, differentiable=True)
        return F.cross_entropy(out.logits.float(), labels, reduction="none")

    def descent(actions: torch.Tensor) -> torch.Tensor:
        a = actions.detach().clone().requires_grad_(True)
        losses(a).sum().backward()
        return -a.grad

    def alignment(direction: torch.Tensor, at: torch.Tensor) -> dict:
        cos = F.cosine_similarity(direction, target - at, dim=1)
        return {"cosine": round(float(cos.mean()), 3), "pointing_closer": round(float((cos > 0).float().mean()), 3)}

    with torch.no_grad():
        grid = torch.linspace(0, 1, GRID)
        best = torch.full((n,), float("inf"))
        for y in grid:
            for x in grid:
                best = torch.minimum(best, losses(torch.stack((y, x)).expand(n, 2)))
        report = {
            "checkpoint": str(path), "images": n,
            "policy": {"spread": [round(float(s), 4) for s in mean.std(0)],
                       "distance_to_object": round(float((mean - target).norm(dim=1).mean()), 4)},
            "step2_loss": {"policy": round(float(losses(mean).mean()), 4),
                           "object_centred": round(float(losses(target).mean()), 4),
                           "grid_best": round(float(best.mean()), 4)},
        }
    report["alignment"] = {}
    for offset in OFFSETS:
        at = (target + offset * (torch.rand(n, 2, generator=gen) * 2 - 1)).clamp(0.0, 1.0)
        row = {"gradient": alignment(descent(at), at)}
        for sigma in SIGMAS:
            summed = sum(descent(at + sigma * torch.randn(n, 2, generator=gen)) for _ in range(DRAWS))
            row[f"mean of {DRAWS} draws, sigma {sigma}"] = alignment(summed, at)
        report["alignment"][f"within {offset}"] = row
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
