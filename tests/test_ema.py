"""The EMA of weights and buffers equals its recursion, with timm's decay warm-up, and replays from its state."""
from __future__ import annotations

import pytest
import torch

from runner.ema import WeightEMA
from runner.errors import ConfigError


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.LazyLinear(2))


def perturb(model: torch.nn.Module, step: int) -> None:
    """A fake optimizer step: new weights, and BatchNorm statistics moved by a training forward pass."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.train()(torch.randn(8, 3, 6, 6) + step)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_the_recursion_over_parameters_and_float_buffers_and_copies_integer_buffers(warmup):
    model = small_net()
    model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    ema = WeightEMA(model, decay=0.9, warmup=warmup, every=2)
    expected = {name: value.double().clone() for name, value in model.state_dict().items()}
    update = 0
    for step in range(1, 11):
        perturb(model, step)
        ema.step(step)
        if step % 2 == 0:  # every=2: an update on even steps only
            update += 1
            # the warm-up written out: d_1 = 0, d_u = min(decay, 1 - (1 + (u - 1))^(-2/3))
            decay = 0.9 if not warmup else (0.0 if update == 1 else min(0.9, 1 - update ** (-2 / 3)))
            for name, value in model.state_dict().items():
                expected[name] = (decay * expected[name] + (1 - decay) * value.double()
                                  if value.is_floating_point() else value.double())
    for name, value in ema.module.state_dict().items():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert ema.updates == 5
    assert ema.module.state_dict()["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"]


def test_warmup_follows_timms_formula_and_caps_at_the_decay():
    ema = WeightEMA(torch.nn.Linear(2, 2), decay=0.999, warmup=True)
    assert ema.decay_at(1) == 0.0
    assert ema.decay_at(2) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema.decay_at(10_001) == pytest.approx(1 - 10_001 ** (-2 / 3))  # 0.99785: still below the cap
    assert ema.decay_at(10 ** 6) == 0.999
    assert WeightEMA(torch.nn.Linear(2, 2), decay=0.999, warmup=True, warmup_power=0.75,
                     warmup_gamma=10.0).decay_at(11) == pytest.approx(1 - 2.0 ** -0.75)


def test_state_dict_round_trip_continues_the_same_average():
    model = small_net()
    model(torch.randn(2, 3, 6, 6))
    one = WeightEMA(model, 0.95, warmup=True)
    for step in range(1, 4):
        perturb(model, step)
        one.step(step)
    two = WeightEMA(model, 0.95, warmup=True)
    two.load_state_dict(one.state_dict())
    perturb(model, 4)
    one.step(4)
    two.step(4)
    for a, b in zip(one.module.state_dict().values(), two.module.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_decays_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"trainer.ema.decay=1.0"):
        WeightEMA(torch.nn.Linear(2, 2), 1.0)


def test_a_run_with_trainer_ema_logs_and_checkpoints_the_average_beside_the_model(tmp_path):
    import json

    from conftest import train

    summary, run_dir = train(tmp_path, "trainer.ema.decay=0.9", "trainer.epochs=2")
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val/acc1" in r]
    assert len(evals) == 2 and all({"ema/val/acc1", "ema/val/loss", "ema/val/ece"} <= set(r) for r in evals)
    assert summary["final_ema_val_acc1"] == evals[-1]["ema/val/acc1"]
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert payload["ema"]["updates"] == summary["steps"]
    assert not all(torch.equal(payload["ema"]["model"][k], payload["model"][k]) for k in payload["model"])


def test_a_second_ema_beside_mesas_teacher_is_a_one_line_error():
    from conftest import compose
    from runner.validate import problems_of

    assert list(problems_of(compose("trainer.device=cpu", "distill=mesa", "trainer.ema.decay=0.999"))) == [
        "trainer.ema.decay=0.999 with distill=mesa: MESA's teacher is already an EMA of the weights, evaluated as "
        "ema/val/* (its decay is distill.decay); drop trainer.ema.decay"]
