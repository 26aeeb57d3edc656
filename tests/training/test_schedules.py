"""Schedules: functions of the update step."""

import pytest

from dgm import training


def test_linear_anneal():
    beta = training.linear_anneal(0.01, 5000)
    assert beta(0) == 0.01
    assert beta(2500) == pytest.approx(0.51)
    assert beta(10**6) == 1.0
    assert training.linear_anneal(0.01, 0)(0) == 1.0
    assert training.linear_anneal(0.0, 10, final=0.5)(100) == 0.5


def test_kl_weight_and_kl_schedule_match_the_old_formula():
    config = training.TrainConfig(anneal_steps=7, kl_initial=0.2)
    schedule = training.kl_schedule(config)["kl_weight"]
    for step in (0, 1, 3, 6, 100):
        old = min(1.0, 0.2 + step / 7)  # the formula of the pre-split trainer
        assert schedule(step) == old == training.kl_weight(step, 7, 0.2)
    assert training.kl_weight(0, 0) == 1.0
    assert training.constant(0.3)(12) == 0.3
