"""airbench94 through divrun's parts: whitening init, Lookahead, norm_lr_scale, warmup_start, alternate flip,
reflect padding, TTA, and the recipe end to end on synthetic data."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO, compose, divrun, read_summary, run_folders
from runner.data.datasets import synthetic
from runner.data.loaders import TensorLoader
from runner.data.splits import Augment, TensorSplit
from runner.errors import ConfigError
from runner.models.airbench import AirBench94, patch_whitening
from runner.optim import build_optimizer
from runner.optim.lookahead import Lookahead
from runner.schedules import Linear
from runner.tta import tta_logits

RECIPE = yaml.safe_load((REPO / "recipes" / "airbench.yaml").read_text())
TINY = ["model.widths=[8,16,16]"]


def correlated_images(n: int = 256, size: int = 16) -> torch.Tensor:
    """Images with strongly correlated channels and neighbouring pixels (blurred, mixed noise)."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 3, size + 2, size + 2, generator=gen)
    blurred = F.avg_pool2d(noise, 3, stride=1)
    mixing = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.4], [0.0, 0.0, 0.4]])
    return torch.einsum("dc,nchw->ndhw", mixing, blurred) + 0.3


def test_whitening_init_whitens_the_patches():
    images = correlated_images()
    model = AirBench94(3, 10, widths=(8, 8, 8), whiten_eps=0.0)
    model.init_from_data(images)
    outputs = F.conv2d(images, model.whiten.weight)  # (N, 24, H-1, W-1), no bias
    half = outputs[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    second_moment = half @ half.T / half.shape[1]
    torch.testing.assert_close(second_moment, torch.eye(12), atol=2e-3, rtol=0)
    torch.testing.assert_close(outputs[:, 12:], -outputs[:, :12])
    # the inputs themselves are far from white: the test can fail
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(1, 4, 5, 0, 2, 3).reshape(12, -1)
    assert (patches @ patches.T / patches.shape[1] - torch.eye(12)).abs().max() > 0.1


def test_whitening_filters_come_in_decreasing_eigenvalue_order_and_freeze():
    images = correlated_images()
    model = AirBench94(3, 10, widths=(8, 8, 8), whiten_eps=0.0)
    model.init_from_data(images)
    norms = model.whiten.weight[:12].flatten(1).norm(dim=1)  # = 1 / sqrt(eigenvalue)
    assert torch.all(norms[1:] >= norms[:-1])
    assert not model.whiten.weight.requires_grad
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    model.set_epoch(2)
    assert model.whiten.bias.requires_grad
    model.set_epoch(3)
    assert not model.whiten.bias.requires_grad


def test_convs_start_as_identity_on_their_input_channels():
    model = AirBench94(3, 10, widths=(32, 32, 32))
    conv = model.features[1][0]  # first conv of the first group: 24 -> 32 channels
    x = torch.randn(1, 24, 5, 5)
    torch.testing.assert_close(conv(x)[:, :24], x)


def sgd_lookahead_reference(params0, grads, lr, k, decay_max, power, total):
    """airbench's loop written out: plain SGD; every k steps ema = lerp(ema, w, 1 - decay), w = ema with
    decay = decay_max (t/T)^power; at the end w = ema."""
    w, ema = params0.clone(), params0.clone()
    for t in range(1, total + 1):
        w = w - lr * grads(w)
        if t % k == 0:
            decay = decay_max * (t / total) ** power
            ema = ema * decay + w * (1 - decay)
            w = ema.clone()
    return ema


def quadratic_grad(w):
    return torch.tensor([1.0, 3.0, -2.0]) * (w - torch.tensor([0.5, -1.0, 2.0]))


def run_wrapper(optimizer, param, steps):
    for _ in range(steps):
        param.grad = quadratic_grad(param.detach())
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("power", [0.0, 3.0])
def test_lookahead_matches_the_written_out_update(power):
    start = torch.tensor([2.0, 1.0, -1.0])
    total, k, decay = 23, 5, 0.95 ** 5
    param = torch.nn.Parameter(start.clone())
    wrapped = Lookahead(torch.optim.SGD([param], lr=0.1), k=k, alpha=1 - decay, power=power, total_steps=total)
    run_wrapper(wrapped, param, total)
    expected = sgd_lookahead_reference(start, quadratic_grad, 0.1, k, decay, power, total)
    torch.testing.assert_close(param.detach(), expected)
    assert wrapped.alpha_at(total) == pytest.approx(1 - decay)


def test_lookahead_with_buffers_equals_an_ema_of_the_whole_state_dict():
    """airbench's LookaheadState: every 5 steps each floating-point state-dict entry (weights and BN running
    statistics) does ema = lerp(ema, w, 1 - decay), w = ema; at the end w = ema."""
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3))

    data = torch.randn(12, 8, 4, generator=torch.Generator().manual_seed(3))
    total = 12

    def train(model, optimizer, after_step=lambda t: None):
        for t, x in enumerate(data, start=1):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            after_step(t)

    reference = net()
    ema = {k: v.clone() for k, v in reference.state_dict().items()}

    def ema_update(t):
        decays = ([0.95 ** 5 * (t / total) ** 3] if t % 5 == 0 else []) + ([1.0] if t == total else [])
        for decay in decays:
            for key, value in reference.state_dict().items():
                if value.is_floating_point():
                    ema[key].lerp_(value, 1 - decay)
                    value.copy_(ema[key])

    train(reference, torch.optim.SGD(reference.parameters(), lr=0.1), ema_update)
    ours = net()
    cfg = compose("optimizer=lookahead",
                  "optimizer.base_overrides={lr:0.1,momentum:0,weight_decay:0,decay_bias_and_norm:true}",
                  "optimizer.alpha=0.2262190625", "optimizer.power=3", "optimizer.average_buffers=true").optimizer
    train(ours, build_optimizer(cfg, ours, total_steps=total))
    for (key, a), b in zip(reference.state_dict().items(), ours.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)


def test_lookahead_state_dict_round_trips_mid_run():
    def fresh():
        param = torch.nn.Parameter(torch.tensor([2.0, 1.0, -1.0]))
        base = torch.optim.SGD([param], lr=0.1, momentum=0.9, nesterov=True)
        return param, Lookahead(base, k=5, alpha=0.3, power=3, total_steps=20)

    param, whole = fresh()
    run_wrapper(whole, param, 20)
    first_param, first = fresh()
    run_wrapper(first, first_param, 7)
    saved, saved_param = first.state_dict(), first_param.detach().clone()
    second_param, second = fresh()
    with torch.no_grad():
        second_param.copy_(saved_param)
    second.load_state_dict(saved)
    assert second.steps == 7
    run_wrapper(second, second_param, 13)
    torch.testing.assert_close(second_param.detach(), param.detach())


def test_lookahead_rejects_bad_settings():
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="optimizer.power"):
        Lookahead(torch.optim.SGD([param], lr=0.1), power=3)  # no total_steps
    with pytest.raises(ConfigError, match="optimizer.alpha"):
        Lookahead(torch.optim.SGD([param], lr=0.1), alpha=0)


def tiny_bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=True), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5, bias=False))


def test_recipe_optimizer_equals_airbench_decoupled_sgd_on_the_summed_loss():
    """airbench: torch SGD with lr = 11.5 / kilostep, wd = 0.0153 * B / kilostep (as wd / lr per group),
    BN lr x 64, on the batch-summed loss. The recipe: SGD lr 1.5, wd 0.0153 / 11.5, norm_lr_scale 64,
    mean loss, at B = 1024. Both must give the same weights."""
    batch, momentum = 1024, 0.85
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = 11.5 / kilostep, 0.0153 * batch / kilostep
    images = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % 5
    theirs = tiny_bn_net()
    norm = [p for n, p in theirs.named_parameters() if n.startswith("1.")]
    other = [p for n, p in theirs.named_parameters() if not n.startswith("1.")]
    their_opt = torch.optim.SGD([dict(params=norm, lr=lr * 64, weight_decay=wd / (lr * 64)),
                                 dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=momentum, nesterov=True)
    ours = tiny_bn_net()
    our_opt = build_optimizer(compose(*RECIPE["protocol"]).optimizer.base_optimizer, ours)
    for _ in range(3):
        for net, opt, reduction in ((theirs, their_opt, "sum"), (ours, our_opt, "mean")):
            F.cross_entropy(net(images), labels, label_smoothing=0.2, reduction=reduction).backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(theirs.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_norm_lr_scale_groups_keep_decay_per_step():
    model = AirBench94(3, 10, widths=(8, 8, 8))
    cfg = compose("optimizer=sgd", "optimizer.norm_lr_scale=64", "optimizer.decay_bias_and_norm=true").optimizer
    groups = build_optimizer(cfg, model).param_groups
    assert len(groups) == 2
    base, norm = groups
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in norm["params"]} == bn_biases  # BN weights are frozen, the whitening bias is not BN
    assert any(p is model.whiten.bias for p in base["params"])
    assert norm["lr"] == pytest.approx(64 * base["lr"])
    assert norm["lr"] * norm["weight_decay"] == pytest.approx(base["lr"] * base["weight_decay"])


def test_warmup_start_matches_airbench_after_warmup_and_ramps_from_the_start():
    total = 476
    schedule = Linear(total, warmup=0.23, warmup_start=0.2, floor=0.07)
    warmup = int(total * 0.23)
    for t in range(total):
        if t < warmup:  # one step ahead of airbench's 0.2 (1 - t/W) + t/W, as divrun's warmup never starts at 0
            assert schedule(t) == pytest.approx(0.2 + 0.8 * (t + 1) / warmup)
        else:
            frac = (t - warmup) / (total - warmup)
            assert schedule(t) == pytest.approx(1.0 * (1 - frac) + 0.07 * frac)


def alternate_loader(pad: int = 0, pad_mode: str = "zeros", n: int = 40):
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    split = TensorSplit(images, torch.arange(n) % 10)
    return split, TensorLoader(split, 8, torch.device("cpu"), (0.0,) * 3, (1 / 255,) * 3,
                               augment=Augment(pad, "alternate", pad_mode), shuffle=True, seed=3)


def images_by_index(loader, epoch):
    batches = list(loader.epoch(epoch))
    order = torch.cat([b[2] for b in batches])
    return torch.cat([b[0] for b in batches])[order.argsort()]


def test_alternate_flip_flips_every_image_on_odd_epochs():
    split, loader = alternate_loader()
    even, odd, next_even = (images_by_index(loader, e) for e in (0, 1, 2))
    torch.testing.assert_close(odd, even.flip(-1))
    torch.testing.assert_close(next_even, even)
    flipped = (even != split.images.float()).flatten(1).any(1)  # which images epoch 0 shows mirrored
    assert 0.2 < flipped.float().mean() < 0.8


def test_reflect_padding_crops_windows_of_the_reflected_image():
    split, loader = alternate_loader(pad=2, pad_mode="reflect")
    plan = loader.epoch_plan(1)
    slot_of = plan.order.argsort()  # the draws of each sample's slot
    offsets, flips = plan.offsets[slot_of], plan.flips[slot_of]
    padded = F.pad(split.images.float(), (2, 2, 2, 2), mode="reflect")
    images = images_by_index(loader, 1)
    for i in range(len(split)):
        dy, dx = offsets[i].tolist()
        window = padded[i, :, dy:dy + 6, dx:dx + 6]
        torch.testing.assert_close(images[i], window.flip(-1) if flips[i] else window)


def test_bad_flip_or_pad_mode_is_a_clear_error():
    with pytest.raises(ConfigError, match="dataset.flip"):
        Augment(2, "sometimes")
    with pytest.raises(ConfigError, match="dataset.pad_mode"):
        Augment(2, True, "circular")


def test_tta_levels_average_the_written_out_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(tta_logits(model, x, 0), model(x))
    mirror = 0.5 * model(x) + 0.5 * model(x.flip(-1))
    torch.testing.assert_close(tta_logits(model, x, 1), mirror)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., 0:8, 0:8], padded[..., 2:10, 2:10]
    translated = sum(0.5 * model(v) + 0.5 * model(v.flip(-1)) for v in (up_left, down_right)) / 2
    torch.testing.assert_close(tta_logits(model, x, 2), 0.5 * mirror + 0.5 * translated)


def protocol_on_synthetic() -> list[str]:
    """The recipe's protocol, on synthetic 32x32 data with a tiny network and budget."""
    keep = [o for o in RECIPE["protocol"] if not o.startswith(("dataset", "trainer.batch_size", "trainer.epochs",
                                                               "trainer.eval"))]
    return ["dataset=synthetic", "dataset.train_size=256", "dataset.val_size=64", "dataset.noise=0.3", "trainer.batch_size=32",
            "trainer.epochs=3", *keep, *TINY, "model.whiten_bias_epochs=1", "optimizer.base_overrides.lr=0.2",
            "trainer.device=cpu", "logger.progress=false"]


def test_recipe_protocol_composes_to_the_airbench_settings():
    cfg = compose(*RECIPE["protocol"])
    assert cfg.model._target_.endswith("AirBench94") and cfg.trainer.tta == 2
    base = cfg.optimizer.base_optimizer
    assert base._target_ == "torch.optim.SGD" and base.nesterov and base.norm_lr_scale == 64
    assert base.lr * (1 + 1 / (1 - base.momentum)) == pytest.approx(11.5)
    assert base.weight_decay * 11.5 == pytest.approx(0.0153)
    assert 1 - cfg.optimizer.alpha == pytest.approx(0.95 ** 5)
    assert compose(*RECIPE["protocol"], *RECIPE["smoke"]["overrides"]).trainer.device == "cpu"


def test_divrun_trains_airbench94_end_to_end(tmp_path):
    divrun(*protocol_on_synthetic(), cwd=tmp_path)
    [run] = run_folders(tmp_path)
    summary = read_summary(run)
    assert summary["status"] == "finished" and summary["steps"] == 24
    assert summary["final_val_acc1"] > 0.3  # 10 classes: chance is 0.1
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["optimizer"]["steps"] == 24 and len(state["optimizer"]["slow"]) > 0
    # the trainer handed init_from_data the normalised training images
    splits = synthetic(train_size=256, val_size=64, noise=0.3)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (splits.mean, splits.std))
    filters = patch_whitening((splits.train.images / 255 - mean) / std, 2, 5e-4)
    torch.testing.assert_close(state["model"]["whiten.weight"], torch.cat([filters, -filters]), rtol=1e-3, atol=1e-4)
