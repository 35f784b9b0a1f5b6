"""Every ConfigError divrun can raise from a config, each triggered by a command: exit 2, the line, and no
folder written. The constructor and factory checks are found in the source (every `ConfigError(...)` call of
runner/), and each must be reached by one of the commands below or be listed in UNREACHABLE with why; the
rules that return problem lines (datasets, distillers, run-level rules) are enumerated by hand below."""
from __future__ import annotations

import ast
import io
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import REPO, divrun
from runner import cli
from runner.errors import ConfigError

RUNNER = REPO / "runner"
CPU = ("trainer.device=cpu",)
NO_CUDA = not torch.cuda.is_available()

# (file, first words of the message) -> why no config reaches it
UNREACHABLE = {
    ("runner/tables/", ""): "divrun-table's recipe errors (tests/test_tables.py), not divrun configs",
    ("runner/comparison/", ""): "divrun-compare's options (tests/test_compare.py), not divrun configs",
    ("runner/results.py", ""): "divrun-compare's paths (tests/test_compare.py), not divrun configs",
    ("runner/sweep.py", "{run_dir} holds a run"): "a resumed sweep's folder (tests/test_compare.py), not one config",
    ("runner/losses/fdiv.py", "loss.generator={generator}: f(1)"): "every named generator has f(1) = 0; it guards "
                                                                    "a new function in generators.py",
    ("runner/data/splits.py", "{needed_by} needs the training labels"): "every dataset of the package exposes its "
                                                                         "labels; it guards a third-party factory",
    ("runner/data/splits.py", "dataset.holdout={holdout}: a stratified"): "a class with one training sample; the "
                                                                           "pre-flight's class count check comes first",
    ("runner/tune/", ""): "divrun-tune's options and folders (tests/test_tune.py), not divrun configs",
    ("runner/search_space.py", "--space"): "divrun-tune's --space (tests/test_search_space.py), not divrun configs",
    ("runner/search_space.py", "{where}: the config has no key"): "divrun-tune's --space (tests/test_search_space.py)",
    ("runner/optim/lookahead.py", "optimizer.power > 0 needs"): "divrun's builder always passes total_steps",
    ("runner/optim/lookahead.py", "optimizer.average_buffers=true needs"): "divrun's builder always passes the model",
    ("runner/schedules.py", "schedule: the run has"): "the batch check makes every epoch at least one step",
    ("runner/distributed.py", "trainer.devices={count}: only"): "needs CUDA" if NO_CUDA else "",
}


def teacher_file(tmp_path: Path, classes: int = 5, in_channels: int = 1) -> Path:
    from runner.models.small import SmallCNN

    path = tmp_path / "teacher.pt"
    torch.save({"model": SmallCNN(in_channels, classes).state_dict()}, path)
    return path


def refined_source(tmp_path: Path, optimizer: str = "torch.optim.SGD", l2=(1, 2, 3), l1=(0, 0, 0)) -> Path:
    folder = tmp_path / "source"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(f"optimizer:\n  _target_: {optimizer}\n")
    (folder / "grad_norms.csv").write_text("step,l2,l1\n" + "".join(f"{t},{a},{b}\n" for t, (a, b) in
                                                                   enumerate(zip(l2, l1))))
    return folder


def run_folder_with(tmp_path: Path, checkpoint) -> Path:
    """A run folder whose only checkpoint is `checkpoint` (bytes or a payload to torch.save)."""
    from runner.config import compose
    from runner.run_folder import save_config

    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    save_config(compose(*CPU), folder)
    path = folder / "checkpoints" / "step_000000005.pt"
    path.write_bytes(checkpoint) if isinstance(checkpoint, bytes) else torch.save(checkpoint, path)
    return folder


def truncated_checkpoint() -> bytes:
    """The first half of a checkpoint file: a disk that filled up mid-write."""
    buffer = io.BytesIO()
    torch.save({"step": 5, "rng": {}, "model": {"w": torch.zeros(1000)}}, buffer)
    return buffer.getvalue()[:len(buffer.getvalue()) // 2]


class RunsCode:
    def __reduce__(self):
        return print, ("a checkpoint ran code",)


def no_bitsandbytes(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


def old_bitsandbytes(tmp_path, monkeypatch):
    old = types.ModuleType("bitsandbytes")
    old.__version__, old.optim = "0.44.1", types.ModuleType("bitsandbytes.optim")
    monkeypatch.setitem(sys.modules, "bitsandbytes", old)


def outside_slurm(tmp_path, monkeypatch):
    for name in ("SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


# (arguments; {tmp} is the test's folder, {teacher}/{source}/{run} what `setup` made), a part of the line, setup
CASES = [
    # composition and the command line
    (["optimizer=adamx"], "optimizer=adamx: no such option; choose one of", None),
    (["trainer.epoch=3"], "trainer.epoch: no such key in trainer; did you mean trainer.epochs?", None),
    (["foo=1", "foo.bar=2"], "foo: no such key in the config; valid keys:", None),
    (["trainer.foo.bar=1"], "trainer.foo: no such key in trainer", None),
    (["optimizer.lr=[1"], "no viable alternative at input '[1'", None),
    (["-m", "optimizer.lr=[1"], "cannot parse the overrides", None),
    (["optimizer=sam", "optimizer.base=nope"], "optimizer=nope does not exist; choose one of", None),
    (["optimizer=sam", "optimizer.base=lookahead"], "optimizer.base=lookahead is itself a wrapper", None),
    (["optimizer=sam", "optimizer.base_overrides={lrr:1}"], "optimizer=sgd has no key lrr", None),
    (["resume={tmp}/nowhere"], "is not a divrun run folder (no config.yaml)", None),
    # values and types
    (["trainer.epochs=abc"], "trainer.epochs=abc: expected a positive number of epochs", None),
    (["trainer.tta=3"], "trainer.tta=3: expected one of 0, 1, 2", None),
    (["logger.wandb.mode=loud"], "logger.wandb.mode=loud: expected one of auto", None),
    (["trainer.precision=fp8"], "trainer.precision=fp8: expected one of auto, fp32, bf16, fp16", None),
    (["optimizer.lr=-1"], "optimizer.lr=-1: the learning rate must be > 0", None),
    (["dataset.limit_train=all"], "dataset.limit_train=all: expected an integer or null", None),
    (["dataset=hf"], "dataset.path is required (hf has no default)", None),
    (["model._target_=nowhere.Model"], "model._target_=nowhere.Model: cannot be imported", None),
    # datasets
    (["dataset.val_fraction=1.5"], "dataset.val_fraction=1.5: must lie strictly between 0 and 1", None),
    (["dataset.image_size=16"], "dataset.image_size: digits are 8x8", None),
    (["dataset.limit_train=0"], "dataset.limit_train=0: must be a positive number of samples", None),
    (["dataset.label_noise.rate=1.5"], "dataset.label_noise.rate=1.5: must be in [0, 1)", None),
    (["dataset.label_noise.rate=0.2", "dataset.label_noise.kind=pairs"], "dataset.label_noise.kind=pairs", None),
    (["dataset.label_noise.rate=0.2", "dataset.label_noise.kind=asymmetric", "dataset.label_noise.flip_map={1:1}"],
     "dataset.label_noise.flip_map={1: 1}: map classes in [0, 10)", None),
    (["dataset=cifar10", "dataset.num_classes=7"], "dataset.num_classes=7: CIFAR has 10 or 100 classes", None),
    (["dataset=cifar10", "dataset.root={tmp}"], "no cifar-10-batches-py/ there", None),
    (["dataset=cifar10", "dataset.download=true", "dataset.flip=sometimes"], "dataset.flip=sometimes: choose", None),
    (["dataset=cifar10", "dataset.download=true", "dataset.pad_mode=wrap"], "dataset.pad_mode=wrap: choose", None),
    (["dataset=imagefolder", "dataset.root={tmp}"], "/train is not a folder", None),
    (["dataset.holdout=2000"], "dataset.holdout=2000: pass a count below the 1437 training samples", None),
    (["dataset.holdout=5"], "a stratified split of 10 classes needs at least 10 on each side", None),
    # divrun-tune's ranges in an option (runner/search_space.py), checked for every run
    (["+optimizer.search_space.momentum={low:0.1,high:1.0,bad:3}"], "optimizer.search_space.momentum: unknown field bad", None),
    (["+optimizer.search_space.momentum=3"], "optimizer.search_space.momentum: expected {low: ..., high: ...[, log: true]", None),
    (["+optimizer.search_space.momentum={choices:[0.9],low:0.5}"], "choices cannot be combined with low", None),
    (["+optimizer.search_space.momentum={choices:[]}"], "choices must be a non-empty list", None),
    (["+optimizer.search_space.momentum={low:fast,high:1.0}"], "low must be a number", None),
    (["+optimizer.search_space.momentum={low:0.1,high:1.0,step:0}"], "step must be a positive number", None),
    (["+optimizer.search_space.momentum={low:0.1,high:1.0,log:sometimes}"], "log must be true or false", None),
    (["+optimizer.search_space.momentum={low:1.0,high:0.1}"], "reversed bounds (low 1 > high 0.1); swap them", None),
    (["+optimizer.search_space.momentum={low:0.0,high:1.0,log:true}"], "log: true needs low > 0", None),
    (["+optimizer.search_space.momentum={low:0.1,high:1.0,log:true,step:0.1}"], "log and step cannot be combined", None),
    (["optimizer=lion", "optimizer.search_space.betas=[0.9,0.99]"], "a per-element list needs at least one range", None),
    (["+optimizer.search_space.lrr={low:0.1,high:1.0}"], "optimizer.search_space.lrr: the option has no key lrr", None),
    (["trainer.batch_size=2000"], "trainer.batch_size=2000 exceeds the 1437 training samples of digits", None),
    (["trainer.batch_size=1000", "trainer.devices=2"], "trainer.batch_size=1000 x 2 processes exceeds", None),
    # models
    (["model=vgg11", "model.depth=12"], "model.depth=12: choose one of", None),
    (["model=vgg8", "model.depth=9"], "model.depth=9: choose one of", None),
    (["model=densenet121", "model.depth=7"], "model.depth=7: choose one of", None),
    (["model=preact_resnet18", "model.depth=7"], "model.depth=7: choose one of", None),
    (["model=kd_resnet20", "model.depth=7"], "model.depth=7: these CIFAR ResNets have depth 6n+2", None),
    (["model=resnet20", "model.depth=7"], "model.depth=7: He et al.'s CIFAR ResNets have depth 6n+2", None),
    (["model=resnet18", "model.depth=7"], "model.depth=7: choose one of", None),
    (["model=wrn", "model.depth=7"], "model.depth=7: wide ResNets have depth 6n+4", None),
    (["model=tv_resnet18"], "model=resnet18: torchvision's models take 3-channel images", None),
    # losses
    (["loss.temperature=0"], "loss.temperature=0: must be > 0", None),
    (["loss.smoothing=1"], "loss.smoothing=1: must be in [0, 1)", None),
    (["loss.z_reg=-1"], "loss.z_reg=-1: must be >= 0", None),
    (["loss=rkl", "loss.smoothing=0"], "reverse KL needs q > 0 wherever p > 0", None),
    (["loss=js", "loss.pi=1"], "loss.pi=1: the weight of q in the mixture must be in (0, 1)", None),
    (["loss=chi2", "loss.form=cubic"], "loss.form=cubic: choose pearson or neyman", None),
    (["loss=fdiv", "loss.generator=cubic"], "loss.generator=cubic: choose one of", None),
    (["loss=compsum", "loss.tau=-1"], "loss.tau=-1: comp-sum losses need tau >= 0", None),
    (["loss=ldr", "loss.lam=0"], "loss.lam=0: the KL weight must be > 0", None),
    (["loss=ldr", "loss.alpha=0.5"], "loss.alpha=0.5: ALDR-KL needs alpha > 1", None),
    (["loss=zloss", "loss.a=0"], "loss.a=0: the softplus steepness must be > 0", None),
    (["loss=sinkhorn", "loss.form=plan"], "loss.form=plan: choose sample", None),
    (["loss=sinkhorn", "loss.cost=l2"], "loss.cost=l2: choose zero_one or ordinal", None),
    (["loss=sinkhorn", "loss.eps=0"], "loss.eps=0, loss.iters=20: need eps > 0", None),
    (["loss.normalizer=sparsemax"], "loss.normalizer=sparsemax: choose softmax or stablemax", None),
    # schedules
    (["schedule.floor=2"], "schedule.floor=2: the final lr fraction must lie in [0, 1]", None),
    (["schedule.warmup_start=2"], "schedule.warmup_start=2: the first warmup lr fraction", None),
    (["schedule.warmup=100000"], "schedule.warmup=100000: give steps (an int below 330)", None),
    (["schedule=poly", "schedule.power=0"], "schedule.power=0: the exponent must be > 0", None),
    (["schedule=uba", "schedule.phi=0"], "schedule.phi=0: UBA's phi must be > 0", None),
    (["schedule=wsd", "schedule.cooldown=cubic"], "schedule.cooldown=cubic: choose one of", None),
    (["schedule=wsd", "schedule.warmup=0.9", "schedule.decay=0.5"], "overlaps the warmup", None),
    (["schedule=multistep", "schedule.gamma=2"], "schedule.gamma=2: the factor per milestone", None),
    (["schedule=multistep", "schedule.milestones=[1.5]"], "schedule.milestones: 1.5 is neither epochs", None),
    (["schedule=refined"], "schedule=refined needs the folder of an earlier run", None),
    (["schedule=refined", "schedule.source={tmp}"], "is not a divrun run folder with recorded gradient norms", None),
    (["schedule=refined", "schedule.source={source}", "optimizer=adamw"], "same optimizer family",
     lambda tmp, mp: {"source": refined_source(tmp)}),
    (["schedule=refined", "schedule.source={source}", "schedule.norm=l3"], "schedule.norm=l3: choose auto",
     lambda tmp, mp: {"source": refined_source(tmp)}),
    (["schedule=refined", "schedule.source={source}", "schedule.smoothing=2"], "schedule.smoothing=2",
     lambda tmp, mp: {"source": refined_source(tmp)}),
    (["schedule=refined", "schedule.source={source}"], "the refined schedule needs the gradient norms of a run of "
     "at least 2 steps", lambda tmp, mp: {"source": refined_source(tmp, l2=(1,), l1=(0,))}),
    (["schedule=refined", "schedule.source={source}", "optimizer=adamw"], "recorded no L1 gradient norms",
     lambda tmp, mp: {"source": refined_source(tmp, "torch.optim.AdamW")}),
    (["schedule=refined", "schedule.source={source}"], "fewer than 2 finite, positive l2 gradient norms",
     lambda tmp, mp: {"source": refined_source(tmp, l2=(0, 0, 1))}),
    (["schedule=refined", "schedule.source={source}", "trainer.grad_norm_l1=false"],
     "schedule.norm=auto: faulty.UndeclaredSGD does not declare whether it is adaptive",
     lambda tmp, mp: {"source": refined_source(tmp, "faulty.UndeclaredSGD")}),
    # optimizers and their capabilities
    (["optimizer._target_=faulty.UndeclaredSGD"], "trainer.grad_norm_l1=auto: optimizer=UndeclaredSGD does not "
     "declare whether it is adaptive", None),
    (["optimizer=lion", "optimizer.betas=[1.5,0.9]"], "optimizer=Lion: need lr >= 0, betas in [0, 1)", None),
    (["optimizer=sam", "optimizer.base=adahessian"], "optimizer=sam cannot wrap AdaHessian", None),
    (["optimizer=perpgrad", "optimizer.base=adahessian"], "optimizer=perpgrad cannot wrap AdaHessian", None),
    (["optimizer=perpgrad", "optimizer.eps=0.0"], "optimizer.eps=0.0: must be > 0", None),
    (["optimizer=lookahead", "optimizer.base=schedulefree_adamw"], "optimizer=Lookahead cannot wrap "
     "schedulefree_adamw: it trains at other weights than it is evaluated at", None),
    (["optimizer=lookahead", "optimizer.k=0"], "optimizer.k=0: the slow weights sync every k >= 1 steps", None),
    (["optimizer=lookahead", "optimizer.alpha=0"], "optimizer.alpha=0: the slow-weight step must lie in (0, 1]", None),
    (["optimizer=lookahead", "optimizer.power=-1"], "optimizer.power=-1: use power >= 0", None),
    (["optimizer=adamw8bit"], "optimizer=adamw8bit needs bitsandbytes: pip install 'divrun[bnb]'", no_bitsandbytes),
    (["optimizer=lion8bit"], "optimizer=lion8bit on the CPU needs bitsandbytes >= 0.50", old_bitsandbytes),
    (["optimizer=adahessian", "trainer.precision=bf16"], "optimizer=AdaHessian is second-order (Hessian-vector "
     "products) and needs fp32", None),
    (["optimizer=adahessian", "trainer.devices=2"], "which DDP's gradient all-reduce cuts", None),
    # evaluation and curvature
    (["eval.calibrate=temperature", "dataset.holdout=null"], "eval.calibrate=temperature fits the temperature on "
     "the holdout split", None),
    (["eval.calibrate=platt"], "eval.calibrate=platt: expected one of null, temperature, temperature_ca", None),
    (["eval.ece_bins=0"], "eval.ece_bins=0: expected a positive integer", None),
    (["trainer.curvature.every=-1"], "trainer.curvature.every=-1: expected an integer >= 0", None),
    # distillation
    (["distill=kd"], "distill.teacher: set it to the teacher's run folder", None),
    (["distill=kd", "distill.teacher={tmp}/nowhere"], "no such run folder or checkpoint file", None),
    (["distill=kd", "distill.teacher={teacher}"], "is a checkpoint file; name its architecture",
     lambda tmp, mp: {"teacher": teacher_file(tmp)}),
    (["distill=kd", "distill.teacher={teacher}", "distill.teacher_model=nope"], "distill.teacher_model=nope: no such model",
     lambda tmp, mp: {"teacher": teacher_file(tmp)}),
    (["distill=kd", "distill.teacher={teacher}", "distill.teacher_model=small_cnn"],
     "its weights do not fit a 10-class 1-channel SmallCNN", lambda tmp, mp: {"teacher": teacher_file(tmp)}),
    (["distill=kd", "distill.teacher={run}"], "checkpoints/last.pt is missing; did the teacher's run finish?",
     lambda tmp, mp: {"run": run_folder_with(tmp, {"step": 5})}),
    (["distill=kd", "distill.teacher={teacher}", "distill.teacher_model=small_cnn", "loss.temperature=2"],
     "loss.temperature=2 with distill=kd", lambda tmp, mp: {"teacher": teacher_file(tmp, 10)}),
    (["loss.temperature=2", "distill=dml"], "loss.temperature=2 with distill=dml: distill.temperature already", None),
    (["distill=dml", "optimizer=sam"], "distill=dml: optimizer=SAM re-evaluates the loss in a closure", None),
    (["distill=dml", "distill.teacher_model=nope"], "distill.teacher_model=nope: no such model", None),
    (["distill=nd", "distill.teacher={teacher}", "distill.teacher_model=small_cnn", "model=tv_resnet18",
      "dataset=synthetic"], "model ResNet has no `features(x)` and linear `head`",
     lambda tmp, mp: {"teacher": teacher_file(tmp, 10, in_channels=3)}),
    (["distill=dhkd", "distill.teacher={teacher}", "distill.teacher_model=small_cnn", "distill.aux_head=deep"],
     "distill.aux_head=deep: choose linear or nonlinear", lambda tmp, mp: {"teacher": teacher_file(tmp, 10)}),
    (["distill=dhkd", "distill.teacher={teacher}", "distill.teacher_model=small_cnn", "trainer.precision=fp16"],
     "distill.gradient_alignment=true takes unscaled first-order gradients",
     lambda tmp, mp: {"teacher": teacher_file(tmp, 10)}),
    (["distill=saf", "distill.epochs_back=0"], "distill.epochs_back=0, distill.start_epoch=5", None),
    (["distill=pskd", "trainer.devices=2"], "distill=pskd runs on one process only", None),
    # which samples: weighting, selection, imbalance, samplers (issue #18)
    (["weighting=loss_rank", "weighting.fn=cubic"], "weighting.fn=cubic: no such weight function", None),
    (["weighting=loss_rank", "weighting.delta=0"], "weighting.delta=0: the normalised losses' half-range", None),
    (["weighting=loss_rank", "weighting.warmup=1.5"], "weighting.warmup=1.5: a step count", None),
    (["weighting=kl_dro", "weighting.temperature=0"], "weighting.temperature=0: the temperature must be > 0", None),
    (["weighting=class_balanced", "weighting.scheme=sqrt"], "weighting.scheme=sqrt: choose one of", None),
    (["weighting=class_balanced", "weighting.beta=1"], "weighting.beta=1: the effective number needs", None),
    (["weighting=class_balanced", "weighting.normalize=sum"], "weighting.normalize=sum: choose classes", None),
    (["weighting=class_balanced", "weighting.scheme=temperature", "weighting.temperature=-1"],
     "weighting.temperature=-1: the sampling temperature must be > 0", None),
    (["weighting=kl_dro", "distill=dml"], "weighting=kl_dro weighs each sample's loss, but distill=dml", None),
    (["weighting=loss_rank", "loss=sinkhorn", "loss.form=batch"], "weighting=loss_rank needs one loss per sample", None),
    (["selection=hard", "selection.fraction=1.5"], "selection.fraction=1.5: the part of the candidates", None),
    (["selection=hard", "selection.fraction=0"], "selection.fraction=0: the part of the candidates", None),
    (["selection=hard", "selection.candidates=0"], "selection.candidates=0: the candidate batch is a whole", None),
    (["dataset.imbalance.ratio=0.5"], "dataset.imbalance.ratio=0.5: must be >= 1", None),
    (["dataset.imbalance.ratio=10", "dataset.imbalance.profile=linear"], "dataset.imbalance.profile=linear", None),
    (["sampler=class_balanced", "sampler.temperature=0"], "sampler.temperature=0: the sampling temperature", None),
    (["sampler=cooldown", "sampler.begin=0.8", "sampler.finish=0.5"], "sampler.begin=0.8, sampler.finish=0.5", None),
    (["sampler=cooldown", "sampler.start=-1"], "sampler.start=-1: the sampling temperature must be > 0", None),
    (["sampler=cooldown", "sampler.end=0"], "sampler.end=0: the sampling temperature must be > 0", None),
    # batch size and training recipes
    (["trainer.accumulate=0"], "trainer.accumulate=0: expected a positive integer (micro-batches per step)", None),
    (["trainer.batch_size=512", "trainer.accumulate=4"], "trainer.batch_size=512 x trainer.accumulate=4 x 1 "
     "processes exceeds the 1437 training samples of digits", None),
    (["trainer.ema.decay=1.5"], "trainer.ema.decay=1.5: expected a number in (0, 1) or null", None),
    (["optimizer.reference_batch=256"], "optimizer.reference_batch=256 is set but no scaling rule", None),
    (["optimizer.lr_scaling=sqrt"], "optimizer.lr_scaling=sqrt needs the global batch its lr was tuned at", None),
    (["optimizer.lr_scaling=cubic", "optimizer.reference_batch=256"], "optimizer.lr_scaling=cubic: choose none", None),
    (["batch=adaptive", "optimizer.lr_scaling=sqrt", "optimizer.reference_batch=256"],
     "optimizer.lr_scaling=sqrt with batch=adaptive: the batch changes during the run", None),
    (["batch=adaptive", "trainer.max_steps=10"], "trainer.max_steps=10 with batch=adaptive", None),
    (["batch=adaptive", "schedule.warmup=5"], "schedule.warmup=5 counts optimizer steps", None),
    (["batch=adaptive", "schedule=refined", "schedule.source={source}"], "schedule=refined with batch=adaptive",
     lambda tmp, mp: {"source": refined_source(tmp)}),
    (["batch=adaptive", "batch.test=foo"], "batch.test=foo: choose norm, ip (inner product) or ip+orth", None),
    (["batch=adaptive", "batch.groups=1"], "batch.groups=1 (>= 2: a variance needs two groups)", None),
    (["dataset.augment=autoaugment"], "dataset.augment=autoaugment: choose none, randaugment or trivialaugment", None),
    (["dataset.augment=randaugment", "dataset.augment_magnitude=40"], "dataset.augment_magnitude=40: a bin in", None),
    (["dataset.random_erasing=2"], "dataset.random_erasing=2: the probability of erasing an image", None),
    (["dataset.mixup=-1"], "dataset.mixup=-1: Beta(a, a) parameters are >= 0", None),
    (["distill=pskd", "dataset.mixup=0.8"], "dataset.mixup/cutmix with distill=pskd", None),
    (["distill=mesa", "trainer.ema.decay=0.999"], "MESA's teacher is already an EMA of the weights", None),
    (["distill=mesa", "distill.decay=1.5"], "distill.decay=1.5: the decay per update lies in (0, 1)", None),
    # devices, processes, run folders and checkpoints
    (["trainer.devices=2", "trainer.sync_bn=true"], "trainer.sync_bn=true needs CUDA", None),
    (["trainer.nnodes=2", "trainer.node_rank=0"], "trainer.rdzv_endpoint: multi-node runs outside SLURM", outside_slurm),
    (["trainer.nnodes=2", "trainer.rdzv_endpoint=node0"], "trainer.rdzv_endpoint=node0: give node 0 as host:port",
     outside_slurm),
    (["trainer.nnodes=2", "trainer.rdzv_endpoint=h:1"], "trainer.node_rank: multi-node runs need this node's rank",
     outside_slurm),
    (["trainer.nnodes=2", "trainer.rdzv_endpoint=h:1", "trainer.node_rank=2"], "trainer.node_rank=2: must be in 0 ..",
     outside_slurm),
    (["trainer.device=cuda:0", "trainer.devices=2"], "pins one GPU but trainer.devices=2", None),
    (["hydra.run.dir={run}"], "already holds a run's checkpoints; continue it with trainer.resume=auto",
     lambda tmp, mp: {"run": run_folder_with(tmp, {"step": 5, "rng": {}})}),
    (["resume={run}", "optimizer.lr=-1"], "optimizer.lr=-1: the learning rate must be > 0",
     lambda tmp, mp: {"run": run_folder_with(tmp, {"step": 5, "rng": {}})}),
    (["resume={run}", "model.width=16"], "the checkpoint's model state does not fit this config",
     lambda tmp, mp: {"run": trained_run(tmp)}),
    (["resume={run}"], "is unreadable", lambda tmp, mp: {"run": run_folder_with(tmp, truncated_checkpoint())}),
    (["resume={run}"], "refused: it asks to run code", lambda tmp, mp: {"run": run_folder_with(tmp, {"x": RunsCode()})}),
    (["resume={run}"], "holds a list, not a checkpoint dict", lambda tmp, mp: {"run": run_folder_with(tmp, [1])}),
    (["resume={run}"], "holds no training state", lambda tmp, mp: {"run": run_folder_with(tmp, {"model": {}})}),
]
if NO_CUDA:
    CASES.append((["trainer.device=cuda"], "trainer.device=cuda: no CUDA device is visible", None))
else:
    CASES.append((["trainer.device=cuda", "trainer.devices=999"], "GPUs are visible", None))


def config_error_sites() -> dict[tuple[str, int], str]:
    """Every `ConfigError(...)`/`UnreadableCheckpoint(...)` call in runner/: (file, line) -> its message's start."""
    sites = {}
    for path in RUNNER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("ConfigError", "UnreadableCheckpoint"):
                argument = node.args[0] if node.args else None
                text = ast.get_source_segment(path.read_text(), argument) if argument is not None else ""
                sites[(path.relative_to(REPO).as_posix(), node.lineno)] = text.lstrip("f\"'")
    return sites


def written(folder: Path) -> list[tuple]:
    """Every file and folder under `folder` with its size and modification time."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def trained_run(tmp_path: Path) -> Path:
    from runner.config import compose
    from runner.job import run_job

    run_job(compose(*CPU, "trainer.max_steps=2", "logger.progress=false", "trainer.batch_size=256"), tmp_path / "run")
    return tmp_path / "run"


def fill(argument: str, **paths) -> str:
    for name, path in paths.items():
        argument = argument.replace("{" + name + "}", str(path))
    return argument


def run_divrun(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`divrun <args>` in this process: (exit code, stderr); training would be a failure of the test."""
    monkeypatch.setattr(sys, "argv", ["divrun", *args])
    monkeypatch.setattr(cli, "hydra_job", lambda: pytest.fail(f"divrun {' '.join(args)} got past the pre-flight"))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


def test_every_config_error_exits_2_with_its_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    reached: set[tuple[str, int]] = set()
    init = ConfigError.__init__

    def recording(self, *args):
        caller = sys._getframe(1)
        reached.add((Path(caller.f_code.co_filename).resolve().relative_to(REPO).as_posix(), caller.f_lineno))
        init(self, *args)

    monkeypatch.setattr(ConfigError, "__init__", recording)
    failures = []
    for number, (args, expected, setup) in enumerate(CASES):
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        with monkeypatch.context() as patches:
            patches.chdir(folder)
            made = (setup(folder, patches) if setup else None) or {}
            capsys.readouterr()  # what the setup printed
            before = written(folder)
            command = [fill(a, tmp=folder, **made) for a in args] + list(CPU if "trainer.device=cuda" not in
                                                                          " ".join(args) else ())
            code, stderr = run_divrun(command, patches, capsys)
        lines = stderr.strip().splitlines()
        if code != 2 or not lines or not all(line.startswith("divrun: error: ") for line in lines) \
                or expected not in stderr or written(folder) != before:
            failures.append(f"divrun {' '.join(command)}: exit {code}, expected {expected!r}, got {stderr.strip()!r}")
    assert not failures, "\n".join(failures)

    unreachable = [(file, start) for (file, start), why in UNREACHABLE.items() if why]
    missed = [f"{file}:{line}: {text[:70]}" for (file, line), text in config_error_sites().items()
              if (file, line) not in reached
              and not any(file.startswith(f) and text.startswith(start) for f, start in unreachable)]
    assert not missed, "ConfigErrors no command above reaches (add a case, or to UNREACHABLE with why):\n" + \
        "\n".join(missed)


def test_the_issues_commands_and_a_sweep_are_refused_before_anything_is_written(tmp_path):
    for args, line in ((["distill=dml", "optimizer=sam"], "re-evaluates the loss in a closure"),
                       (["loss.temperature=2", "distill=dml"], "set loss.temperature=1"),
                       (["foo=1", "foo.bar=2"], "foo: no such key in the config"),
                       (["-m", "optimizer=sgd,sam", "distill=dml"], "[in job optimizer=sam distill=dml trainer.device=cpu]")):
        result = divrun(*args, *CPU, cwd=tmp_path, check=False)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        [message] = result.stderr.strip().splitlines()
        assert message.startswith("divrun: error: ") and line in message, message
        assert list(tmp_path.iterdir()) == [], args  # the sweep's first (valid) job did not run either
