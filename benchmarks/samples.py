"""Cost of choosing which samples drive a step, per training step, as a ratio to the plain step in the same run.

Each option trains the same model (synthetic 16x16 images, `small_cnn`, batch 128) through the run's `Step`
(runner/step.py), on batches drawn beforehand by the run's own loader (hard selection's are its candidate batches).
The options take turns over several rounds and each keeps its best round. `ratio` = time per step over `none`'s;
`forwarded` = samples through the model per step over `none`'s (hard selection: its C x B candidates without
gradients, then the B it keeps), the count behind the ratio. The weightings add elementwise work on N losses
(and one all-gather of N floats under DDP): their ratio should stay close to 1.
"""
from __future__ import annotations

from benchmarks.distill import run_for, step_timer

OPTIONS = {
    "none": [],
    "loss_rank": ["weighting=loss_rank", "weighting.warmup=0"],
    "kl_dro": ["weighting=kl_dro"],
    "class_balanced": ["weighting=class_balanced"],
    "sampler=class_balanced": ["sampler=class_balanced"],
    "selection=hard (4)": ["selection=hard", "selection.candidates=4"],
    "selection=hard (2)": ["selection=hard", "selection.candidates=2"],
}


def run(quick: bool) -> list[dict]:
    rounds, steps = (3, 5) if quick else (5, 10)
    timers, forwarded, devices = {}, {}, {}
    for name, overrides in OPTIONS.items():
        run = run_for([*overrides, "trainer.epochs=10"])
        timers[name], devices[name] = step_timer(run), str(run.runtime.device)
        candidates = run.selection.candidates
        forwarded[name] = (candidates * run.cfg.trainer.batch_size + run.trained_batch if candidates > 1
                           else run.trained_batch) / run.cfg.trainer.batch_size
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(rounds):  # rounds over all options: a change of machine load hits every option alike
        for name, timer in timers.items():
            best[name] = min(best[name], timer(steps))
    return [{"option": n, "ms_per_step": 1000 * best[n], "ratio": best[n] / best["none"], "forwarded": forwarded[n],
             "device": devices[n]} for n in OPTIONS]
