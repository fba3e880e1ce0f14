"""The paper's schedule: warm-up from 0 over 2k steps, 1e-3, then 1e-4 from step 12k; AdamW on adapters only."""

from __future__ import annotations

import pytest
import torch

from gill.optim import build_optimizer, build_scheduler, lr_factor


def test_schedule_matches_the_paper_run():
    assert lr_factor(0) == 0.0
    assert lr_factor(1000) == pytest.approx(0.5)
    assert lr_factor(2000) == 1.0 and lr_factor(11999) == 1.0
    assert lr_factor(12000) == pytest.approx(0.1) and lr_factor(19999) == pytest.approx(0.1)
    assert lr_factor(22000) == pytest.approx(0.01)


def test_scheduler_rates_depend_only_on_the_step_so_resume_matches():
    param = torch.nn.Parameter(torch.zeros(2))
    optim = build_optimizer([param], lr=1e-3)
    sched = build_scheduler(optim, warmup_steps=4, decay_every=3, gamma=0.5)
    rates = []
    for _ in range(10):
        rates.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    assert rates == pytest.approx([1e-3 * lr_factor(s, 4, 3, 0.5) for s in range(10)])
    resumed_optim = build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    resumed = build_scheduler(resumed_optim, warmup_steps=4, decay_every=3, gamma=0.5)
    resumed_optim.load_state_dict(optim.state_dict())
    resumed.load_state_dict(sched.state_dict())
    assert resumed_optim.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(10, 4, 3, 0.5))
    resumed_optim.step()
    resumed.step()
    assert resumed_optim.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(11, 4, 3, 0.5))


def test_optimizer_has_the_paper_hyperparameters_and_refuses_frozen_parameters():
    trainable = torch.nn.Parameter(torch.zeros(2))
    group = build_optimizer([trainable]).param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (1e-3, (0.9, 0.95), 0.01, 1e-8)
    with pytest.raises(ValueError, match="frozen"):
        build_optimizer([trainable, torch.nn.Parameter(torch.zeros(1), requires_grad=False)])
