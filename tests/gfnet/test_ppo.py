from __future__ import annotations

import torch

from gfnet.config import PPOConfig
from gfnet.models.policy import ActorCritic
from gfnet.train.ppo import PolicyEvaluator, RolloutMemory, discounted_returns, ppo_update


def test_discounted_returns():
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    g = discounted_returns(r, 0.5)
    torch.testing.assert_close(g, torch.tensor([[1.5, 0.5], [1.0, 1.0], [2.0, 0.0]]))


def test_ppo_moves_policy_towards_rewarded_actions():
    """Toy bandit: the same state every time; reward = -distance of the action to a target.
    PPO updates must move the policy's mean location towards the target."""
    torch.manual_seed(0)
    policy = ActorCritic((4, 2, 2), state="conv", conv_channels=4, hidden=16, action_std=0.1)
    evaluator = PolicyEvaluator(policy)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    cfg = PPOConfig(ppo_epochs=4)
    target = torch.tensor([0.85, 0.15])
    state = torch.ones(64, 4, 2, 2)

    def mean_distance():
        with torch.no_grad():
            mean, _, _ = policy(state[:1], policy.init_hidden(1))
        return float((mean[0] - target).norm())

    d0 = mean_distance()
    for _ in range(60):
        mem = RolloutMemory()
        with torch.no_grad():
            h = policy.init_hidden(64)
            for _k in range(2):  # two decisions per episode, as T = 3
                a, logp, _v, h = policy.act(state, h, "sample")
                mem.add(state, a, logp, -(a.clamp(0, 1) - target).norm(dim=1))
        ppo_update(evaluator, opt, mem, cfg)
    d1 = mean_distance()
    assert d1 < 0.5 * d0 and d1 < 0.15, (d0, d1)
