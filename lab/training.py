"""Meta-training as a generator of step records.

:func:`train` yields one dict per logged step (loss, accuracy, tasks/s, progress, and the
meta-validation accuracy when one was run). The CLI prints them, the run store writes them,
the pages draw them; nothing here prints. The checkpoint with the best meta-validation
accuracy is kept as ``best.pt``; ``last.pt`` is where a resume starts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lab import runs
from lab.algorithms import build
from lab.augment import augment_episode, step_generator
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.device import describe_device, pick_device
from lab.distributed import average_gradients, current_world, from_main, mean_across, shard
from lab.episodes import check_request, sample_batch, sample_episode
from lab.evaluation import episode_accuracies, mean_ci95
from lab.sitting import Sitting, check_finite


def _pools(config: TrainConfig):
    dataset = load_dataset(config.dataset, config.data_dir, config.split_scheme, config.strokes)
    train_pool, val_pool = dataset.pool("train", turned=config.turned_classes), dataset.pool("val")
    check_request(train_pool, config.way_for_training, config.k_shot, config.n_query)
    check_request(val_pool, config.n_way, config.k_shot, config.n_query)
    return train_pool, val_pool


def check_config(config: TrainConfig) -> None:
    """Raise ``ValueError`` (or ``DatasetUnavailable``) if ``config`` cannot be trained, before any work."""
    _pools(config)


def lr_factor(schedule: str, progress: float) -> float:
    """The fraction of the configured meta learning rate to use at ``progress`` (0 to 1) of the run."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return 1.0


def _warm_start(model, config: TrainConfig) -> int:
    """Load ``config.init_from``'s weights into ``model``; returns the step count they were trained for."""
    state = runs.load_checkpoint(runs.resolve_source(config.init_from))
    source = state.get("config", {}).get("algorithm")
    if source != config.algorithm:
        raise ValueError(f"init_from {config.init_from} holds a {source} model, not {config.algorithm}")
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"init_from {config.init_from} does not fit this model ({str(err).splitlines()[0][:200]})") from None
    return int(state.get("step") or 0)


class _Pace:
    """What the run spends on steps, validations and checkpoints, for its ETA and its budget.

    With a minutes budget every validation gets a share of it (a quarter of the budget over the
    validations the run will make) and the final one the time that is left; training stops early
    enough to leave that time and a checkpoint's. The rule is checked by the slow budget test in
    ``tests/test_training.py``.
    """

    VAL_SHARE = 0.25

    def __init__(self, config: TrainConfig, budget: float, first_step: int):
        self.config, self.budget, self.first_step = config, budget, first_step
        self.step_s, self.steps = 0.0, 0
        self.val_s_per_episode: float | None = None
        self.checkpoint_s = 0.0

    def add_step(self, seconds: float) -> None:
        self.step_s += seconds
        self.steps += 1

    def add_validation(self, seconds: float, episodes: int) -> None:
        self.val_s_per_episode = seconds / max(episodes, 1)

    @property
    def per_step(self) -> float | None:
        return self.step_s / self.steps if self.steps else None

    def validation_s(self) -> float:
        """The expected time of one full validation (0 before any was timed)."""
        return (self.val_s_per_episode or 0.0) * self.config.val_episodes

    def validation_cap(self, step: int, elapsed: float, last: bool) -> float:
        """Seconds the validation at ``step`` may take."""
        if math.isinf(self.budget):
            return math.inf
        left = self.budget - elapsed - self.checkpoint_s
        if last:
            return max(left, 0.0)
        steps = self.config.steps - self.first_step
        if self.per_step:
            steps = min(steps, int(self.budget / self.per_step))
        planned = 1 + steps // self.config.val_every
        return max(0.0, min(self.VAL_SHARE * self.budget / planned, left))

    def reserve(self) -> float:
        """Time to keep for the final validation and checkpoint."""
        share = self.VAL_SHARE * self.budget if not math.isinf(self.budget) else math.inf
        return min(self.validation_s(), share) + 2 * self.checkpoint_s

    def eta(self, step: int, elapsed: float, sitting_left: float) -> float | None:
        """Seconds until the run ends: the steps left, the validations still to come, a checkpoint."""
        if self.per_step is None:
            return None
        left = self.config.steps - step
        vals = left // self.config.val_every + (1 if left % self.config.val_every else 0)
        eta = left * self.per_step + vals * self.validation_s() + self.checkpoint_s
        return max(0.0, min(eta, self.budget - elapsed, sitting_left))


MIN_VAL_EPISODES = 10


def validate(model, pool, config: TrainConfig, device, cap_s: float = math.inf, progress=None) -> dict:
    """Meta-validation on ``config.val_episodes`` episodes (the same ones at every validation of a
    run), ending early when ``cap_s`` seconds have passed and at least ``MIN_VAL_EPISODES`` ran."""
    rng = np.random.default_rng(config.seed + 1)  # episode_stream's episodes, drawn one at a time
    t0, accs = time.perf_counter(), []
    while len(accs) < config.val_episodes:
        ep = sample_episode(pool, config.n_way, config.k_shot, config.n_query, rng)
        accs.append(episode_accuracies(model, [ep], device)[0])
        if progress is not None:
            progress(len(accs), config.val_episodes)
        if len(accs) >= MIN_VAL_EPISODES and time.perf_counter() - t0 >= cap_s:
            break
    accuracy, ci95 = mean_ci95(accs)
    return {"accuracy": accuracy, "ci95": ci95, "episodes": len(accs), "seconds": time.perf_counter() - t0}


def train(config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False,
          time_limit_s: float | None = None, launched_at: float | None = None) -> Iterator[dict]:
    """Meta-train ``config``, writing the run folder ``run_dir`` when one is given.

    With ``resume`` the model, optimiser, task stream and metrics continue from ``last.pt``;
    otherwise a config with ``init_from`` starts from that checkpoint's weights and step count
    (a fresh optimiser, a task stream seeded by the seed and that step), and its first
    meta-validation, before any step, makes the starting weights the best so far.
    The run ends when ``steps`` or ``minutes`` is reached (the minutes hold loading, validation
    and the last checkpoint too), or when a stop is requested (``runs.request_stop``, SIGTERM,
    or ``time_limit_s`` seconds of this call), always with a checkpoint written; a time limit leaves
    the learning-rate schedule as the steps define it. ``launched_at``, a :func:`time.perf_counter`
    reading, starts the sitting's clock earlier: when its process was launched. ``status.json``
    names the phase: loading, training, validating (episodes done of planned), checkpoint, then the
    final state.
    Under ``torchrun`` the tasks of each outer step are shared out across the processes (see
    ``lab.distributed``); every process yields the records, only rank 0 validates and writes.
    """
    world = current_world()
    run_dir = Path(run_dir) if run_dir is not None else None
    with Sitting(run_dir if world.is_main else None) as sitting:  # only rank 0 writes the run folder
        yield from _sitting(config, run_dir, resume, time_limit_s, world, sitting, launched_at)


def _sitting(config: TrainConfig, run_dir: Path | None, resume: bool, time_limit_s: float | None, world,
             sitting: Sitting, launched_at: float | None) -> Iterator[dict]:
    """The body of :func:`train`, inside its sitting."""
    start = min(launched_at, time.perf_counter()) if launched_at is not None else time.perf_counter()
    writer = sitting.run_dir
    status = sitting.status
    status("loading", error=None)
    device = pick_device(config.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    if config.meta_batch % world.size:
        raise ValueError(f"meta_batch {config.meta_batch} must be divisible by the number of processes {world.size}")
    train_pool, val_pool = _pools(config)
    model = build(config).to(device)
    optimizer = model.configure_optimizer(config.meta_lr)
    rng = np.random.default_rng(config.seed)
    step, best_val, elapsed_before = 0, -1.0, 0.0

    warm = False
    if resume:
        state = runs.load_checkpoint(run_dir / "last.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        step, best_val, elapsed_before = state["step"], state["best_val"], state["elapsed_s"]
        if writer:
            runs.truncate_metrics(run_dir, step)
    elif config.init_from:
        step = _warm_start(model, config)
        rng, warm = np.random.default_rng([config.seed, step]), True
    for group in optimizer.param_groups:  # the rate the schedule scales (kept in the optimiser's state)
        group.setdefault("initial_lr", group["lr"])
    budget = config.minutes * 60 if config.minutes else math.inf
    pace = _Pace(config, budget, step)
    elapsed_now = lambda: elapsed_before + time.perf_counter() - start  # noqa: E731
    sitting_left = lambda: math.inf if time_limit_s is None else time_limit_s - (time.perf_counter() - start)  # noqa: E731
    status("training", step=step, device=describe_device(device)["name"], world_size=world.size)

    def checkpoint(path_name: str) -> None:
        if writer:
            t0 = time.perf_counter()
            runs.save_checkpoint(run_dir / path_name, model, optimizer, config, step=step, best_val=best_val,
                                 elapsed_s=elapsed_now(), rng=rng.bit_generator.state)
            pace.checkpoint_s = max(pace.checkpoint_s, time.perf_counter() - t0)

    def run_validation(cap_s: float) -> dict:
        def shown(done: int, total: int) -> None:  # at the start, then at most once a second
            status("validating", 1.0 if done else 0.0, step=step, val_done=done, val_total=total)

        shown(0, config.val_episodes)
        val = validate(model, val_pool, config, device, cap_s, shown)
        pace.add_validation(val["seconds"], val["episodes"])
        return val

    if warm and world.is_main:
        best_val = run_validation(pace.validation_cap(step, elapsed_now(), last=False))["accuracy"]
        checkpoint("best.pt")
    elif world.is_main:  # one timed episode, so the first ETA and the budget count the validations to come
        probe = validate(model, val_pool, config.replace(val_episodes=1), device)
        pace.add_validation(probe["seconds"], probe["episodes"])
    window_loss, window_acc, window_tasks, window_start = 0.0, 0.0, 0, time.perf_counter()
    reason = "finished"
    ended = False  # the step judged the sitting's last is validated, and the sitting ends on it
    while True:
        if ended:
            break
        elapsed = elapsed_now()
        stop = sitting.stop_requested or sitting_left() <= 0
        if from_main(step >= config.steps or elapsed + pace.reserve() >= budget or stop, world, device):
            reason = "stopped" if from_main(stop, world, device) else "finished"
            break
        t_step = time.perf_counter()
        model.train()
        batch = sample_batch(train_pool, config.way_for_training, config.k_shot, config.n_query,
                             config.meta_batch, rng, device, config.within_group)
        if config.augment:
            batch = augment_episode(batch, step_generator(config.seed, step))
        out = model.outer_loss(shard(batch, world))
        check_finite(out.loss, step + 1)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        average_gradients(model.parameters(), world)
        if config.lr_schedule != "constant":
            done, = mean_across([max(step / config.steps, elapsed / budget)], world, device)  # one rate for all
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(config.lr_schedule, done)
        optimizer.step()
        step += 1
        sitting.step = step
        window_loss += out.loss.item()
        window_acc += out.accuracy.item()
        window_tasks += config.meta_batch
        pace.add_step(time.perf_counter() - t_step)
        elapsed = elapsed_now()
        finished = step >= config.steps or elapsed + pace.reserve() >= budget
        last = from_main(finished or sitting_left() <= 0, world, device)
        if last:
            reason = "finished" if from_main(finished, world, device) else "stopped"
        if step % config.log_every and step % config.val_every and not last:
            status("training", 2.0, step=step, elapsed_s=elapsed, eta_s=pace.eta(step, elapsed, sitting_left()),
                   progress=min(1.0, max(step / config.steps, elapsed / budget)))
            continue
        n = window_tasks / config.meta_batch
        loss, accuracy = mean_across([window_loss / n, window_acc / n], world, device)
        record = {
            "step": step,
            "loss": loss,
            "accuracy": accuracy,
            "tasks_per_s": window_tasks / (time.perf_counter() - window_start),
            "meta_lr": optimizer.param_groups[0]["lr"],
            **{k: float(v) for k, v in out.extras.items()},
        }
        if (step % config.val_every == 0 or last) and world.is_main:
            val = run_validation(pace.validation_cap(step, elapsed_now(), last))
            record.update(val_accuracy=val["accuracy"], val_ci95=val["ci95"], val_episodes=val["episodes"],
                          val_s=round(val["seconds"], 3))
            status("checkpoint", step=step)
            if val["accuracy"] > best_val:
                best_val = val["accuracy"]
                checkpoint("best.pt")
            checkpoint("last.pt")
        elapsed = elapsed_now()
        progress = min(1.0, max(step / config.steps, elapsed / budget))
        record.update(elapsed_s=elapsed, progress=progress, best_val_accuracy=best_val if best_val >= 0 else None,
                      eta_s=None if last else pace.eta(step, elapsed, sitting_left()))
        if writer:
            runs.append_jsonl(run_dir / "metrics.jsonl", record)
            status("training", step=step, progress=progress, eta_s=record["eta_s"],
                   best_val_accuracy=record["best_val_accuracy"], elapsed_s=elapsed)
        yield record
        ended = last
        window_loss, window_acc, window_tasks, window_start = 0.0, 0.0, 0, time.perf_counter()
    if best_val < 0 or reason == "stopped":  # a stop before any validation still leaves a best.pt
        status("checkpoint", step=step)
        if best_val < 0:
            checkpoint("best.pt")
        checkpoint("last.pt")
    sitting.finish(reason, step=step, progress=min(1.0, step / config.steps) if reason == "stopped" else 1.0,
                   eta_s=None, elapsed_s=elapsed_now(), best_val_accuracy=best_val if best_val >= 0 else None)
