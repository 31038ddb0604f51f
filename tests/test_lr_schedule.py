"""The learner's lr schedule: warm-up to the peak, then constant or a decay that ends at the stage's last step."""

import pytest
import torch

from learner.config import LearnerConfig
from learner.rank import lr_scheduler


def _lrs(config: LearnerConfig, total_steps: int | None, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = lr_scheduler(optimizer, config, total_steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])  # the lr the next optimizer step uses
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_warms_up_to_the_peak_and_decays_to_zero_at_the_last_step():
    lrs = _lrs(LearnerConfig(lr_schedule="cosine", warmup_ratio=0.2), total_steps=20, steps=21)
    assert lrs[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert lrs[12] == pytest.approx(0.05)  # halfway through the decay
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:-1], lrs[5:], strict=True))


def test_constant_stays_at_the_peak_after_warm_up():
    lrs = _lrs(LearnerConfig(warmup_ratio=0.2), total_steps=10, steps=6)
    assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1, 0.1])
    assert _lrs(LearnerConfig(), total_steps=None, steps=3) == pytest.approx([0.1] * 3)  # no stage length needed


def test_a_decay_without_the_stage_length_is_refused():
    with pytest.raises(ValueError, match="needs the number of training steps"):
        _lrs(LearnerConfig(lr_schedule="linear"), total_steps=None, steps=1)
    with pytest.raises(ValueError, match="needs the number of training steps"):
        _lrs(LearnerConfig(warmup_ratio=0.1), total_steps=None, steps=1)
