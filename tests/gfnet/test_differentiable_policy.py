"""The differentiable policy training (optim.policy_training = "differentiable"): the policy
learns from the classification losses through crop_resize's box gradients, in stage 3, with
no PPO stage 2.

- the gradient reaches the policy's parameters through the crop, on every CPU backend, and
  equals finite differences of the loss (float64, a tiny model);
- the recipe trains a tiny config end to end, resumes bit-exactly after a kill, and what it
  writes is read by evaluation, the report and gfnet.load unchanged (under torchrun:
  test_resume_ddp.py).
"""

from __future__ import annotations

import json
import signal

import pytest
import torch

import gfkernels
from gfnet.config import build_config
from gfnet.models import build_model
from gfnet.models.patches import Patches
from gfnet.train import EndToEndStage, gfnet_stages, trained_parts
from gfnet.train.stages import _RolloutLoss

from .conftest import tiny_overrides
from .test_demo import demo_of_recipe
from .test_resume_ddp import _model, _train

CPU_BACKENDS = ("reference", "cpp", "triton")  # the backends with box gradients that run on CPU tensors


def _tiny_model(backend: str, steps: int = 3):
    cfg = build_config("digits", overrides=tiny_overrides(**{
        "model.image_size": 40, "model.patch_size": 16, "model.width": 4, "model.max_steps": steps,
        "optim.policy_training": "differentiable"}))
    torch.manual_seed(0)
    model = build_model(cfg.model, backend).double().eval()
    m = cfg.model
    # float64 patches, so that finite differences resolve the gradient (the model crops to float32)
    model.patches = Patches(model.kernels, m.patch_size, glance_mode=m.glance_mode,
                            glance_align_corners=m.glance_align_corners, mean=m.mean, std=m.std,
                            out_dtype=torch.float64)
    return cfg, model


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_reaches_the_policy_through_the_crop(backend):
    if backend not in gfkernels.backends.available_names(torch.device("cpu")):
        pytest.skip(f"backend {backend!r} is not available here (triton: TRITON_INTERPRET=1)")
    # one focus step: with more, a location also moves the next step's policy input (the
    # feature map of this step's patch), a path the policy's stop-gradient cuts on purpose
    # and finite differences would see
    cfg, model = _tiny_model(backend, steps=2)
    for p in model.parameters():
        p.requires_grad_(False)
    bias = model.policy.actor.bias
    bias.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 1, 40, 40, generator=g, dtype=torch.float64)
    labels = torch.tensor([1, 4, 7])
    with torch.no_grad():
        bias.add_(torch.tensor([0.3, -0.2], dtype=torch.float64))  # off the centre, between pixels
    loss_of = _RolloutLoss(model, "mean", head_weight=1.0, differentiable=True)

    loss, _ = loss_of(images, labels)
    (grad,) = torch.autograd.grad(loss, bias)
    assert grad.abs().max() > 1e-6  # the locations matter to the loss

    eps = 1e-7  # the loss has kinks (ReLUs, whole pixels of the glance), so a small step
    numeric = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for k in range(2):
            bias[k] += eps
            up = loss_of(images, labels)[0]
            bias[k] -= 2 * eps
            down = loss_of(images, labels)[0]
            bias[k] += eps
            numeric[k] = (up - down) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)


def test_the_whole_pixel_crop_passes_no_gradient_to_the_policy():
    """The inference path (and PPO's) crops whole pixels: no gradient reaches the policy there,
    which is why the differentiable stage crops at the exact locations."""
    cfg, model = _tiny_model("reference")
    images = torch.rand(2, 1, 40, 40, dtype=torch.float64)
    out = model.glance_step(images)
    step = model.focus_step(images, out.state, policy="mean")
    assert not step.boxes.requires_grad
    exact = model.focus_step(images, out.state, policy="mean", differentiable=True)
    assert exact.boxes.requires_grad
    torch.testing.assert_close(exact.boxes.detach().floor().float(), step.boxes)


def test_continuous_focus_boxes_are_the_focus_boxes_before_the_floor():
    a = torch.rand(50, 2, dtype=torch.float64)
    a[0] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    exact = gfkernels.continuous_focus_boxes(a, (128, 96), 48)
    torch.testing.assert_close(exact.floor(), gfkernels.focus_boxes(a, (128, 96), 48))
    torch.testing.assert_close(exact[:, 2:] - exact[:, :2], torch.full((50, 2), 48.0, dtype=torch.float64))
    assert exact.dtype == torch.float64 and exact[0].tolist() == [48.0, 0.0, 96.0, 48.0]


def test_the_recipe_has_no_ppo_stage_and_trains_the_policy_in_stage_3():
    cfg = build_config("digits", overrides=["optim.policy_training=differentiable"])
    assert gfnet_stages(cfg) == [1, 3]
    assert "policy" in trained_parts(cfg, 3) and "policy" not in trained_parts(cfg, 1)
    assert gfnet_stages(build_config("digits")) == [1, 2, 3]
    from gfnet.config.schema import POLICY_TRAININGS
    from gfnet.train.stages import RECIPES

    assert set(RECIPES) == set(POLICY_TRAININGS)  # the config accepts exactly the recipes there are
    assert isinstance(EndToEndStage(), EndToEndStage) and EndToEndStage.title == "stage 3 (end to end)"
    with pytest.raises(Exception, match="policy_training"):
        build_config("digits", overrides=["optim.policy_training=reinforce"]).validate()


def test_differentiable_recipe_trains_and_resumes_exactly_after_a_kill(tmp_path):
    sets = {"optim.epochs_stage1": 1, "optim.epochs_stage3": 2, "optim.policy_training": "differentiable",
            "run.deterministic": "true", "data.train_samples": 24}
    ref = _train(tmp_path / "ref", **sets)
    assert ref.returncode == 0, ref.stderr
    assert not (tmp_path / "ref" / "stage2.pt").exists()
    start, end = _model(tmp_path / "ref" / "stage1.pt"), _model(tmp_path / "ref" / "stage3.pt")
    policy = [k for k in end if k.startswith("policy.actor.") or k.startswith("policy.gru.")]
    assert policy and all(not torch.equal(start[k], end[k]) for k in policy)  # the policy learned
    assert all(torch.equal(start[k], end[k]) for k in end if k.startswith("policy.critic."))  # unused here
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (3, 1), (3, 2)]
    assert rows[-1]["stage_title"] == "stage 3 (end to end)" and "policy" in rows[-1]["lr"]
    # killed after stage 3's first epoch, then resumed: the same weights as the run never killed
    killed = _train(tmp_path / "run", callbacks=["--kill-after", "3:1"], **sets)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _train(tmp_path / "run", "--resume", **sets)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1/2" in resumed.stderr
    again = _model(tmp_path / "run" / "stage3.pt")
    for k in end:
        assert torch.equal(end[k], again[k]), k


def test_demo_of_the_differentiable_recipe_writes_a_full_report(tmp_path):
    """Evaluation, budgets, FLOPs, the dynamic engine, the report and gfnet.load take the model
    as they take a PPO-trained one."""
    out = tmp_path / "run"
    demo_of_recipe(out, "differentiable", "end to end (differentiable)")
    assert not (out / "stage2.pt").exists()
    assert "stage 3 (end to end)" in (out / "report.md").read_text()
    # the diagnostic of the location gradient (bench/focus_gradient.py) reads such a run
    from bench.focus_gradient import OFFSETS, main

    probe = main([str(out), "--images", "4", "--threads", "1"])
    assert probe["images"] == 4 and len(probe["policy"]["spread"]) == 2
    assert all(0 <= v < 100 for v in probe["step2_loss"].values())  # cross-entropies, finite
    rows = [probe["alignment"][f"within {o}"] for o in OFFSETS]
    assert all(-1 <= a["cosine"] <= 1 and 0 <= a["pointing_closer"] <= 1 for r in rows for a in r.values())


def test_object_centred_actions_centre_the_patch_on_the_object():
    from bench.focus_gradient import object_centred_actions

    boxes = torch.tensor([[40.0, 10.0, 56.0, 26.0], [0.0, 0.0, 12.0, 12.0], [90.0, 100.0, 110.0, 120.0]])
    actions = object_centred_actions(boxes, (128, 112), 48)
    patch = gfkernels.continuous_focus_boxes(actions, (128, 112), 48)
    centre = (patch[:, :2] + patch[:, 2:]) / 2
    torch.testing.assert_close(centre[0], torch.tensor([48.0, 24.0]))  # inside: centred exactly
    assert actions[1].tolist() == [0.0, 0.0]  # at the corner: the patch goes as far as it can
    assert torch.all(patch[2, 2:] == torch.tensor([112.0, 128.0]))  # and at the far edges
