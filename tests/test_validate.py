"""Config validation: every bad input gets one line naming the key and the fix, before anything is on disk."""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO, compose, divrun
from runner.checkpoint import Checkpointer
from runner.cli import check_command
from runner.errors import ConfigError
from runner.validate import problems_of


def problems(*overrides: str) -> list[str]:
    return list(problems_of(compose("trainer.device=cpu", *overrides)))


def command_error(*args: str) -> str:
    with pytest.raises(ConfigError) as caught:
        check_command(list(args))
    return str(caught.value)

OPTIMIZERS = ", ".join(sorted(p.stem for p in (REPO / "conf" / "optimizer").glob("*.yaml")))


def test_the_defaults_are_valid():
    assert problems() == []


def test_the_airbench_protocol_is_valid_but_for_its_data_folder():
    """recipes/airbench.yaml's protocol (9.9 epochs and all) passes; only the placeholder root is missing."""
    protocol = yaml.safe_load((REPO / "recipes" / "airbench.yaml").read_text())["protocol"]
    found = problems(*[o.replace("${data:}", "/nonexistent") for o in protocol])
    assert len(found) == 1 and found[0].startswith("dataset.root=/nonexistent: no cifar-10-batches-py/"), found


def test_unknown_option_in_a_group_lists_the_valid_ones():
    assert command_error("optimizer=adamx") == f"optimizer=adamx: no such option; choose one of {OPTIMIZERS}"


def test_unknown_key_suggests_the_close_one():
    message = command_error("trainer.epoch=3")
    assert message.startswith("trainer.epoch: no such key in trainer; did you mean trainer.epochs? valid keys: ")
    assert "\n" not in message


@pytest.mark.parametrize("override, expected", [
    ("trainer.epochs=abc", "trainer.epochs=abc: expected a positive number of epochs (9.9 is allowed); pass e.g. trainer.epochs=30"),
    ("trainer.batch_size=1.5", "trainer.batch_size=1.5: expected a positive integer; pass e.g. trainer.batch_size=128"),
    ("trainer.precision=fp8", "trainer.precision=fp8: expected one of auto, fp32, bf16, fp16; "
                              "pass e.g. trainer.precision=auto"),
    ("trainer.on_nonfinite=ignore", "trainer.on_nonfinite=ignore: expected one of stop, skip; "
                                    "pass e.g. trainer.on_nonfinite=stop"),
    ("trainer.compile=yes", "trainer.compile=yes: expected true or false; pass e.g. trainer.compile=false"),
    ("optimizer.lr=fast", "optimizer.lr=fast: expected a number (SGD's lr); pass e.g. optimizer.lr=0.001"),
    ("optimizer.nesterov=1", "optimizer.nesterov=1: expected true or false (SGD's nesterov); "
                             "pass e.g. optimizer.nesterov=false"),
    ("dataset.limit_train=all", "dataset.limit_train=all: expected an integer or null (digits's limit_train); "
                                "pass e.g. dataset.limit_train=null"),
])
def test_wrong_types(override, expected):
    assert problems(override) == [expected]


@pytest.mark.parametrize("override", ["optimizer.lr=0", "optimizer.lr=-0.1"])
def test_non_positive_lr(override):
    value = override.split("=")[1]
    assert problems(override) == [f"optimizer.lr={value}: the learning rate must be > 0; pass e.g. optimizer.lr=0.1"]


@pytest.mark.parametrize("value", [0, -8])
def test_non_positive_batch_size(value):
    assert problems(f"trainer.batch_size={value}") == [
        f"trainer.batch_size={value}: expected a positive integer; pass e.g. trainer.batch_size=128"]


def test_batch_size_above_the_dataset_size():
    assert problems("trainer.batch_size=2000") == [
        "trainer.batch_size=2000 exceeds the 1437 training samples of digits; pass trainer.batch_size=1437 or less"]
    assert problems("trainer.batch_size=128", "dataset.limit_train=100") == [
        "trainer.batch_size=128 exceeds the 100 training samples of digits; pass trainer.batch_size=100 or less"]
    assert problems("dataset=synthetic", "dataset.train_size=64", "trainer.batch_size=65")[0].startswith(
        "trainer.batch_size=65 exceeds the 64 training samples of synthetic")


def test_missing_dataset_root_without_download(tmp_path):
    root = tmp_path / "nowhere"
    assert problems("dataset=cifar10", f"dataset.root={root}") == [
        f"dataset.root={root}: no cifar-10-batches-py/ there; pass dataset.root=<folder holding "
        f"cifar-10-batches-py> or dataset.download=true"]
    assert problems("dataset=cifar10", f"dataset.root={root}", "dataset.download=true") == []
    assert problems("dataset=imagefolder", f"dataset.root={root}")[0].startswith(
        f"dataset.root={root}: {root}/train is not a folder")


def test_required_key_left_unset():
    assert problems("dataset=hf") == ["dataset.path is required (hf has no default); pass dataset.path=<value>"]


def test_second_order_optimizer_needs_fp32():
    second_order = "optimizer._target_=faulty.SecondOrderSGD"
    assert problems(second_order, "trainer.precision=fp16") == [
        "optimizer=SecondOrderSGD is second-order (Hessian-vector products) and needs fp32, but "
        "trainer.precision=fp16 means fp16 here; pass trainer.precision=fp32"]
    assert problems(second_order, "trainer.precision=fp32") == []


def test_component_hook_reverse_kl_needs_smoothed_targets():
    reverse_kl = "loss._target_=faulty.ReverseKL"
    assert problems(reverse_kl) == ["loss=reverse_kl: KL(p || q) is infinite for one-hot targets; pass "
                                    "loss.smoothing=0.1 (or another value > 0)"]
    assert problems(reverse_kl, "loss.smoothing=0.1") == []


def test_component_hook_teacher_folder_needs_a_checkpoint(tmp_path):
    distill = ["distill._target_=faulty.Distill", f"+distill.teacher={tmp_path}"]
    assert problems(*distill) == [f"distill.teacher={tmp_path}: no checkpoint in that folder; pass the run folder "
                                  f"of a finished run (it holds checkpoints/last.pt)"]
    Checkpointer(tmp_path).save({"step": 1})
    assert problems(*distill) == []


def test_a_target_that_does_not_import():
    assert problems("model._target_=nowhere.Model")[0].startswith(
        "model._target_=nowhere.Model: cannot be imported (ModuleNotFoundError")


def test_a_sweep_names_the_job_with_the_problem():
    assert command_error("-m", "optimizer.lr=0.1,-1") == (
        "optimizer.lr=-1: the learning rate must be > 0; pass e.g. optimizer.lr=0.1 [in job optimizer.lr=-1]")


def test_divrun_prints_one_line_per_problem_and_creates_nothing(tmp_path):
    result = divrun("trainer.batch_size=0", "optimizer.lr=-1", "trainer.device=cpu", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "divrun: error: trainer.batch_size=0: expected a positive integer; pass e.g. trainer.batch_size=128",
        "divrun: error: optimizer.lr=-1: the learning rate must be > 0; pass e.g. optimizer.lr=0.1"]
    result = divrun("-m", "optimizer=sgd,adamx", cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"divrun: error: optimizer=adamx: no such option; choose one of {OPTIMIZERS} [in job optimizer=adamx]"]
    assert list(tmp_path.iterdir()) == []
