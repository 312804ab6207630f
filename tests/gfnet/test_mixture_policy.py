"""The mixture policy training (optim.policy_training = "mixture"): stage 2 learns where to look
by gradient through a soft choice among the features of candidate glimpses, then PPO's fine-tune.

- the loss's gradient wrt the mixture weights is what finite differences of it give (float64),
  reaches the scorers and the policy (actor and trunk, not the critic), leaves the frozen parts
  untouched, and is the same on every CPU backend of the crops;
- the recipe trains a tiny config, resumes bit-exactly after a kill (its scorers are saved in
  the stage's checkpoint), and the demo writes a full report from it.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

import gfkernels
from gfnet.config import build_config
from gfnet.errors import ConfigError
from gfnet.models import build_model
from gfnet.models.patches import Patches
from gfnet.train import gfnet_stages, trained_parts
from gfnet.train.stages import (MixturePolicyStage, _MixturePolicyLoss, candidate_precision, candidate_scorers,
                                grid_locations)

from .conftest import tiny_overrides
from .test_demo import demo_of_recipe
from .test_resume_ddp import _model, _train

CPU_BACKENDS = ("reference", "cpp", "triton")


def _runner(backend: str = "cpp", dtype=torch.float32, grid: int = 2, refine: float = 0.2, precision: str = "fp32",
            lookahead: float = 0.0, steps: int = 3):
    cfg = build_config("digits", overrides=tiny_overrides(**{
        "model.image_size": 40, "model.patch_size": 16, "model.width": 4, "model.max_steps": steps,
        "optim.policy_training": "mixture", "optim.mixture_grid": grid, "optim.mixture_refine": refine}))
    torch.manual_seed(0)
    model = build_model(cfg.model, backend).to(dtype)
    model.eval()
    m = cfg.model
    # patches in the model's dtype (the model crops to float32), so that finite differences
    # resolve the gradient in float64
    model.patches = Patches(model.kernels, m.patch_size, glance_mode=m.glance_mode,
                            glance_align_corners=m.glance_align_corners, mean=m.mean, std=m.std,
                            out_dtype=dtype)
    for name, part in model.param_groups().items():
        for p in part:
            p.requires_grad_(name == "policy")
    scorers = candidate_scorers(model, grid, refine).to(dtype)
    return cfg, _MixturePolicyLoss(model, scorers, grid, cfg.optim.mixture_action_weight, refine,
                                   precision=precision, lookahead=lookahead)


def _batch(n=3):
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (n, 1, 40, 40), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def test_grid_locations_cover_the_square_row_first():
    locs = grid_locations(3)
    assert locs.shape == (9, 2) and locs[0].tolist() == [0.0, 0.0] and locs[-1].tolist() == [1.0, 1.0]
    assert locs[1].tolist() == [0.0, 0.5] and locs[3].tolist() == [0.5, 0.0]  # (row, column)


def test_refinement_candidates_surround_the_previous_location():
    """From the second focus step on, 5 candidates after the grid's: the previous location and
    ``refine`` up, down, left and right of it (clamped to the image); their features are the
    local encoder's of the patches there (the previous location's are the previous step's own)."""
    _, runner = _runner(refine=0.2)
    assert [s.net[-1].out_features for s in runner.scorers] == [4, 4 + 5]
    previous = torch.tensor([[0.5, 0.5], [0.1, 0.95]], dtype=torch.float32)
    near = runner.near_locations(previous)
    expected = [[[0.5, 0.5], [0.3, 0.5], [0.7, 0.5], [0.5, 0.3], [0.5, 0.7]],
                [[0.1, 0.95], [0.0, 0.95], [0.3, 0.95], [0.1, 0.75], [0.1, 1.0]]]
    torch.testing.assert_close(near, torch.tensor(expected))
    images, _ = _batch(2)
    model = runner.model
    with torch.no_grad():
        features, fmaps = runner.candidate_features(images, near)
        one = model.local_encoder(model.focus_input(images[1:], near[1, 2:3]))[0]
        step = model.focus_step(images, model.glance_step(images).state, policy="given", action=previous)
    assert features.shape[:2] == (2, 5) and fmaps is None  # feature maps only when asked for
    torch.testing.assert_close(features[1, 2], one[0])
    torch.testing.assert_close(features[:, 0], step.encoder_head.features)
    assert _runner(refine=0.0)[1].scorers[1].net[-1].out_features == 4  # the grid only


def test_candidates_run_through_a_folded_copy_of_the_frozen_encoder():
    """The stage's local encoder is frozen: the candidates go through a copy with its batch norms
    folded, in channels_last, whose features are the encoder's to rounding; an encoder that
    learns is used as it is (a copy would go stale)."""
    _, runner = _runner()
    model = runner.model
    copy = runner.candidate_encoder
    assert copy is not model.local_encoder
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.local_encoder.modules())
    images, _ = _batch(2)
    patches = model.focus_input(images, torch.rand(2, 2, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        torch.testing.assert_close(copy(patches)[0], model.local_encoder(patches)[0], rtol=1e-5, atol=1e-5)
    model.local_encoder.requires_grad_(True)
    assert _MixturePolicyLoss(model, runner.scorers, 2, 1.0).candidate_encoder is model.local_encoder


def test_candidates_in_bf16_are_the_encoders_features_to_bf16_rounding():
    """precision "bf16": the candidates' copy holds bf16 weights and encodes bf16 patches; the
    features come back in float32, equal to the encoder's to bf16's rounding (8 bits of
    mantissa through a few layers), and the loss's gradient still reaches the scorers."""
    _, runner = _runner(precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in runner.candidate_encoder.parameters())
    assert all(p.dtype == torch.float32 for p in runner.model.local_encoder.parameters())
    images, labels = _batch(3)
    grid = grid_locations(2).expand(3, -1, -1)
    exact = _runner()[1]
    with torch.no_grad():
        features, reference = runner.candidate_features(images, grid)[0], exact.candidate_features(images, grid)[0]
    assert features.dtype == torch.float32
    assert float((features - reference).norm() / reference.norm()) < 2e-2
    assert not torch.equal(features, reference)  # it did run in bf16
    loss, _ = runner(images, labels)
    torch.testing.assert_close(loss, exact(images, labels)[0], rtol=2e-2, atol=0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in runner.scorers.parameters())


def test_candidate_precision_auto_is_bf16_where_the_hardware_has_it(monkeypatch):
    import gfnet.train.stages as stages
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(stages, "has_native_bf16", lambda device, native=native: native)
        assert candidate_precision("auto", "cpu") == expected
        assert candidate_precision("fp32", "cpu") == "fp32" and candidate_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="optim.mixture_precision 'fp16' runs on a GPU only"):
        candidate_precision("fp16", "cpu")


def test_candidates_encoded_in_chunks_are_the_same():
    """A large batch's n * K candidate patches go through the encoder a chunk at a time (an
    uneven last chunk here): the features, their feature maps and the loss are those of one
    call."""
    _, runner = _runner(lookahead=1.0)
    images, labels = _batch(3)
    near = runner.near_locations(torch.rand(3, 2, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        whole = runner.candidate_features(images, near, feature_maps=True)
        whole_loss = runner(images, labels)[0]
        runner.chunk = 5  # 27 patches: 5 + 5 + ... + 2
        torch.testing.assert_close(runner.candidate_features(images, near, feature_maps=True), whole)
        torch.testing.assert_close(runner(images, labels)[0], whole_loss)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_reaches_the_scorers_and_the_policy(backend):
    if backend not in gfkernels.backends.available_names(torch.device("cpu")):
        pytest.skip(f"backend {backend!r} is not available here")
    _, runner = _runner(backend)
    images, labels = _batch()
    loss, logits = runner(images, labels)
    assert len(logits) == runner.model.max_steps and loss.dim() == 0
    loss.backward()
    model = runner.model
    for name in ("actor", "gru", "encoder"):
        grads = [p.grad for p in getattr(model.policy, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in model.policy.critic.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in runner.scorers.parameters())
    for name in ("global_encoder", "local_encoder", "classifier"):
        assert all(p.grad is None for p in model.param_groups()[name]), name


def test_the_loss_and_gradients_are_the_same_on_every_backend():
    """The candidates are whole-pixel patches (exact copies): every backend crops the same."""
    results = []
    for backend in CPU_BACKENDS:
        if backend not in gfkernels.backends.available_names(torch.device("cpu")):
            continue
        _, runner = _runner(backend)
        images, labels = _batch()
        loss, _ = runner(images, labels)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in runner.scorers.parameters()]))
    assert len(results) >= 2
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0)


def test_the_weights_gradient_matches_finite_differences():
    """float64: d loss / d (each scorer's last bias: the grid's candidates, and at the second
    focus step the refinement ones too) against central differences, of the mixture's
    classification loss (the actor's regression target is a constant of the gradient by design,
    so its weight is 0 here)."""
    _, runner = _runner(dtype=torch.float64)
    runner.action_weight = 0.0
    images, labels = _batch()
    for scorer in runner.scorers:
        bias = scorer.net[-1].bias
        loss, _ = runner(images, labels)
        (grad,) = torch.autograd.grad(loss, bias)
        assert grad.abs().sum() > 0
        eps = 1e-6
        for k in range(bias.numel()):
            with torch.no_grad():
                bias[k] += eps
                up = runner(images, labels)[0]
                bias[k] -= 2 * eps
                down = runner(images, labels)[0]
                bias[k] += eps
            assert abs(float((up - down) / (2 * eps)) - float(grad[k])) < 1e-6 * max(1.0, abs(float(grad[k])))


def _value_by_hand(model, scorer, images, labels, state, locations, grid, relook):
    """next_step_value from the model's own steps: for each candidate location, the focus step
    there, then the next step at each option (the grid's locations, and the same location again
    when ``relook``), weighed by the next scorer's softmax over those options."""
    values = []
    for k in range(locations.shape[1]):
        after = model.focus_step(images, state, policy="given", action=locations[:, k])
        options = [grid[:, j] for j in range(grid.shape[1])] + ([locations[:, k]] if relook else [])
        losses = torch.stack([torch.nn.functional.cross_entropy(
            model.focus_step(images, after.state, policy="given", action=a).logits, labels, reduction="none")
            for a in options], 1)
        weights = torch.softmax(scorer(after.state.fmap)[:, :len(options)], 1)
        values.append((weights * losses).sum(1))
    return torch.stack(values, 1)


def _first_focus_step_value(runner, images, labels):
    """The glance step, the 2 x 2 grid, and next_step_value of the first focus step's
    candidates (the grid) from the runner's own candidate encoding."""
    n = images.shape[0]
    grid = grid_locations(2).to(torch.float64).expand(n, -1, -1)
    with torch.no_grad():
        glance = runner.model.glance_step(images)
        features, fmaps = runner.candidate_features(images, grid, feature_maps=True)
        value = runner.next_step_value(1, features, fmaps, glance.state.cls, features, labels)
    return glance, grid, value


@pytest.mark.parametrize("refine", [0.2, 0.0])
def test_the_look_ahead_values_each_candidate_by_the_next_steps_expected_loss(refine):
    """float64, 4 steps: each candidate of a focus step is valued by the loss the next step
    expects after it, as the model's own steps give it (the classifier's state after the
    candidate, the next scorer reading its feature map, over the grid and, with refinement
    candidates, a second look at it); at the first focus step from the grid's features, at the
    second from the refinement candidates' too (the previous location's feature map being the
    previous step's own)."""
    _, runner = _runner(dtype=torch.float64, refine=refine, lookahead=1.0, steps=4)
    model = runner.model
    images, labels = _batch()
    n = images.shape[0]
    glance, grid, value = _first_focus_step_value(runner, images, labels)
    with torch.no_grad():
        expected = _value_by_hand(model, runner.scorers[1], images, labels, glance.state, grid, grid, refine > 0)
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)
        # the second focus step's candidates: the grid, then the previous location and its neighbours
        previous = torch.full((n, 2), 0.4, dtype=torch.float64)
        first = model.focus_step(images, glance.state, policy="given", action=previous)
        locations = torch.cat([grid, runner.near_locations(first.action)], 1) if refine > 0 else grid
        features, fmaps = runner.candidate_features(images, locations, feature_maps=True)
        value = runner.next_step_value(2, features, fmaps, first.state.cls, features[:, :4], labels)
        expected = _value_by_hand(model, runner.scorers[2], images, labels, first.state, locations, grid, refine > 0)
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)
    assert value.shape == (n, locations.shape[1])


def test_the_look_ahead_adds_its_weighted_value_and_teaches_the_steps_own_scorer():
    """The loss with the look-ahead is the loss without it plus, for every focus step with a
    next one, the weight times the candidates' values under the step's weights (averaged over
    the focus steps as the rest of the loss is); its gradient reaches that step's scorer, not the
    next one's (the value is a constant of the gradient: the next step learns from its own loss)."""
    _, plain = _runner(dtype=torch.float64)
    _, ahead = _runner(dtype=torch.float64, lookahead=2.5)
    ahead.scorers.load_state_dict(plain.scorers.state_dict())
    images, labels = _batch()
    glance, _, value = _first_focus_step_value(ahead, images, labels)
    with torch.no_grad():
        weights = torch.softmax(ahead.scorers[0](glance.state.fmap), 1)
    base, _ = plain(images, labels)
    loss, _ = ahead(images, labels)
    steps = ahead.model.max_steps - 1
    # the first focus step looks ahead, the last has no next step; without the weight none does
    assert ahead.looks_ahead(1) and not ahead.looks_ahead(steps) and not plain.looks_ahead(1)
    torch.testing.assert_close(loss - base, 2.5 * (weights * value).sum(1).mean() / steps, rtol=1e-10, atol=1e-12)
    base.backward()
    loss.backward()
    for a, b in zip(ahead.scorers[1].parameters(), plain.scorers[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)
    assert any(not torch.allclose(a.grad, b.grad) for a, b in zip(ahead.scorers[0].parameters(),
                                                                  plain.scorers[0].parameters()))


def test_the_recipe_and_its_options():
    cfg = build_config("digits", overrides=["optim.policy_training=mixture"])
    assert gfnet_stages(cfg) == [1, 2, 3]
    assert trained_parts(cfg, 2) == ("policy",)
    assert MixturePolicyStage().epochs(cfg) == cfg.optim.mixture_epochs == 1
    assert MixturePolicyStage().batch_size(cfg) == cfg.optim.mixture_batch_size == 16  # the preset's
    assert cfg.optim.mixture_lr == 2e-3 and cfg.optim.mixture_precision == "auto"
    assert cfg.optim.mixture_lookahead == 3.0
    for bad, message in (("optim.mixture_grid=1", "mixture_grid must be >= 2"),
                         ("optim.mixture_epochs=-1", "mixture_epochs must be >= 0"),
                         ("optim.mixture_batch_size=-1", "mixture_batch_size must be >= 0"),
                         ("optim.mixture_lr=0", "mixture_lr must be > 0"),
                         ("optim.mixture_action_weight=0", "mixture_action_weight must be > 0"),
                         ("optim.mixture_lookahead=-1", "mixture_lookahead must be >= 0"),
                         ("optim.mixture_refine=-0.1", "mixture_refine must be in"),
                         ("optim.mixture_refine=0.6", "mixture_refine must be in"),
                         ("optim.mixture_precision=fp16", "mixture_precision must be one of auto, fp32, bf16"),
                         ("model.max_steps=1", "model.max_steps must be >= 2")):
        with pytest.raises(ConfigError, match=message):
            build_config("digits", overrides=["optim.policy_training=mixture", bad]).validate()


def test_stage_2_learns_in_batches_of_its_own_size(tiny_cfg, tmp_path, monkeypatch):
    from gfnet.train import Trainer

    cfg = tiny_cfg(**{"optim.policy_training": "mixture", "optim.mixture_batch_size": 4,
                      "optim.epochs_stage1": 1, "optim.mixture_epochs": 1, "model.max_steps": 3})
    assert MixturePolicyStage().batch_size(cfg) == 4 and cfg.optim.batch_size == 8
    trainer = Trainer(cfg, tmp_path / "run")
    (tmp_path / "run").mkdir()
    seen = []
    forward = _MixturePolicyLoss.forward
    monkeypatch.setattr(_MixturePolicyLoss, "forward", lambda self, x, y: seen.append(len(x)) or forward(self, x, y))
    trainer.train_stage(1, None)
    trainer.train_stage(2, None)
    assert seen == [4, 4, 4, 4]  # 16 training images in batches of 4, where stage 1 took 8
    ck = torch.load(tmp_path / "run" / "stage2.pt", weights_only=False)
    assert ck["scheduler"]["last_epoch"] == 4  # the schedule counts the stage's own steps
    assert ck["optimizer"]["param_groups"][0]["initial_lr"] == cfg.optim.mixture_lr


def test_mixture_recipe_trains_and_resumes_exactly_after_a_kill(tmp_path):
    sets = {"optim.epochs_stage1": 1, "optim.mixture_epochs": 2, "optim.mixture_batch_size": 4,
            "optim.epochs_stage3": 1, "optim.policy_training": "mixture", "run.deterministic": "true",
            "data.train_samples": 24}
    ref = _train(tmp_path / "ref", **sets)
    assert ref.returncode == 0, ref.stderr
    start, end = _model(tmp_path / "ref" / "stage1.pt"), _model(tmp_path / "ref" / "stage2.pt")
    policy = [k for k in end if k.startswith("policy.actor.") or k.startswith("policy.gru.")]
    assert policy and all(not torch.equal(start[k], end[k]) for k in policy)  # the policy learned
    assert all(torch.equal(start[k], end[k]) for k in end if not k.startswith("policy."))  # frozen
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (2, 1), (2, 2), (3, 1)]
    assert rows[1]["stage_title"] == MixturePolicyStage.title
    scorers = torch.load(tmp_path / "ref" / "stage2.pt", weights_only=False)["stage_modules"]
    assert scorers and all(k.split(".")[0] in ("0", "1") for k in scorers)  # one per focus step
    # killed after stage 2's first epoch, then resumed: the same weights as the run never killed
    killed = _train(tmp_path / "run", callbacks=["--kill-after", "2:1"], **sets)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # the scorers of other options (here without refinement candidates) cannot resume them
    shutil.copytree(tmp_path / "run", tmp_path / "other")
    other = _train(tmp_path / "other", "--resume", "--force", **sets, **{"optim.mixture_refine": 0.0})
    assert other.returncode != 0 and "other shapes than this config makes" in other.stderr, other.stderr
    resumed = _train(tmp_path / "run", "--resume", **sets)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1/2" in resumed.stderr
    for name in ("stage2.pt", "stage3.pt"):
        done, again = _model(tmp_path / "ref" / name), _model(tmp_path / "run" / name)
        for k in done:
            assert torch.equal(done[k], again[k]), (name, k)


def test_demo_of_the_mixture_recipe_writes_a_full_report(tmp_path):
    demo_of_recipe(tmp_path / "run", "mixture", "by gradient through candidate glimpses")
    assert (tmp_path / "run" / "stage2.pt").exists()
