"""The meta-learners: one inner loop, vectorised or not, and what each algorithm must do.

Tolerances: the vmap and loop paths run the same float32 operations in another order (and
batched convolutions), so losses agree to 1e-5 and meta-gradients to a relative 1e-4.

These tests pin PyTorch to one intra-op thread: on a machine whose cores are shared with other
work, OpenMP's threads wait on each other and small-tensor work runs several times slower.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab import runs
from lab.algorithms import REGISTRY
from lab.algorithms.execution import Execution
from lab.algorithms.inner import HEAD, conv4_features, encode, inner_loop, sgd
from lab.algorithms.reference import reference_backward
from lab.config import TrainConfig
from lab.episodes import sample_batch, sample_episode
from lab.evaluation import meta_test
from lab.models import Conv4, max_pool_2x2
from lab.training import train

ROOT = Path(__file__).resolve().parents[1]
GRADIENT_BASED = ["maml", "fomaml", "anil", "metasgd", "learned-opt", "reptile"]
ALL = GRADIENT_BASED + ["metanet"]
SMALL = {"hidden": 16, "inner_steps": 2, "inner_lr": 0.1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(name: str, n_way: int = 5, vectorize: str = "auto", precision: str = "auto", **hparams):
    cls = REGISTRY[name]
    values = {"hidden": 16, **hparams} if name == "metanet" else {**SMALL, **hparams}
    torch.manual_seed(0)
    return cls(cls.make_hparams(values), n_way).set_execution(Execution(vectorize, precision))


@pytest.fixture(scope="module")
def batch(omniglot):
    return sample_batch(omniglot.pool("train"), 5, 1, 3, 3, np.random.default_rng(0))


def meta_gradient(model, batch) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model.outer_loss(batch)
    out.loss.backward()
    return out, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float = 1e-4):
    scale = max(max(x.abs().max().item() for x in a), 1e-8)
    worst = max((x - y).abs().max().item() for x, y in zip(a, b))
    assert worst <= rtol * scale, f"meta-gradients differ by {worst:.3g} (largest entry {scale:.3g})"


# --------------------------------------------------------------------------- the inner loop


def test_the_functional_encoder_computes_conv4():
    net = Conv4(hidden=16, groups=4)
    params = {f"encoder.{k}": v for k, v in net.named_parameters()}
    x = torch.rand(40, 1, 28, 28)
    assert torch.allclose(conv4_features(params, x, 4), net(x), atol=1e-6)
    many = torch.rand(200, 1, 28, 28)  # encoded in pieces on the CPU
    assert torch.allclose(encode(params, many, 4), net(many), atol=1e-6)
    grads = [torch.autograd.grad(f.square().sum(), params["encoder.blocks.0.0.weight"])[0]
             for f in (net(x), conv4_features(params, x, 4))]
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_one_inner_step_lowers_the_support_loss(omniglot):
    model = small("maml")
    ep = sample_episode(omniglot.pool("train"), 5, 1, 0, np.random.default_rng(1))

    def support_loss(p):
        return F.cross_entropy(model.logits(p, ep.support_x), ep.support_y)

    params = model.task_params(5)
    losses = [support_loss(params).item()]
    for _ in range(3):
        params = inner_loop(support_loss, params, 1, sgd(0.1), second_order=False)
        losses.append(support_loss(params).item())
    assert losses[0] == pytest.approx(math.log(5))  # every class scored alike at the start
    assert losses[1] < losses[0] and losses[2] < losses[1] and losses[3] < losses[2]


@pytest.mark.parametrize("shape", [(3, 8, 28, 28), (2, 4, 7, 7), (1, 2, 3, 3)])
def test_max_pooling_outside_autograd_equals_torch_s_and_leaves_gradients_alone(shape):
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))
    x.requires_grad_()
    g1, = torch.autograd.grad((max_pool_2x2(x) ** 2).sum(), x)
    g2, = torch.autograd.grad((F.max_pool2d(x, 2) ** 2).sum(), x)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("shape", [(3, 8, 28, 28), (2, 4, 7, 7), (1, 2, 3, 3)])
def test_gathered_max_pooling_matches_torch_s_to_the_second_derivative_ties_included(shape):
    x = torch.randn(shape)
    x[:, :, :4, :4] = 0.5  # flat windows: the first maximum of each must be the one chosen
    upstream = torch.randn(F.max_pool2d(x, 2).shape, requires_grad=True)
    results = []
    for pool in (lambda t: max_pool_2x2(t, gather=True), lambda t: F.max_pool2d(t, 2)):
        xg = x.clone().requires_grad_()
        out = pool(xg)
        grad, = torch.autograd.grad(out, xg, upstream, create_graph=True)
        second, = torch.autograd.grad((grad * x.cos()).sum(), upstream)
        results.append((out.detach(), grad.detach(), second))
    for ours, torch_s in zip(*results):
        assert torch.equal(ours, torch_s)


def test_the_first_inner_step_moves_only_the_class_symmetric_head(omniglot):
    model = small("maml")
    ep = sample_episode(omniglot.pool("train"), 5, 1, 0, np.random.default_rng(2))
    params = model.task_params(5, detach=True)

    def support_loss(p):
        return F.cross_entropy(model.logits(p, ep.support_x), ep.support_y)

    grads = torch.autograd.grad(support_loss(params), list(params.values()))
    assert all(g.abs().max() == 0 for k, g in zip(params, grads) if k not in HEAD)
    assert all(g.abs().max() > 0 for k, g in zip(params, grads) if k == "head.weight")
    # so skipping the encoder at step 0 changes nothing but the cost
    short = inner_loop(support_loss, params, 3, sgd(0.1), second_order=False, symmetric_head=True)
    full = inner_loop(support_loss, params, 3, sgd(0.1), second_order=False, symmetric_head=False)
    assert all(torch.allclose(short[k], full[k], atol=1e-7) for k in params)


@pytest.mark.parametrize("name", ALL)
def test_the_vectorised_loss_and_meta_gradient_equal_the_per_task_loop(name, batch):
    looped, batched = small(name, vectorize="loop"), small(name, vectorize="batched")
    assert looped.strategy(torch.device("cpu")) == "loop"
    assert batched.strategy(torch.device("cpu")) in ("vmap", "batched")
    out_loop, loop = meta_gradient(looped, batch)
    out_vmap, vmap = meta_gradient(batched, batch)
    assert out_vmap.loss.item() == pytest.approx(out_loop.loss.item(), abs=1e-5)
    assert out_vmap.accuracy.item() == pytest.approx(out_loop.accuracy.item())
    assert_close(loop, vmap)


@pytest.mark.parametrize("name", ["maml", "anil", "reptile", "metanet"])
def test_tasks_side_by_side_in_threads_give_the_per_task_loop_s_loss_and_meta_gradient(name, batch):
    out_loop, loop = meta_gradient(small(name, vectorize="loop"), batch)
    torch.set_num_threads(2)
    try:
        model = small(name, vectorize="threads")
        assert model.strategy(torch.device("cpu")) == "threads"
        out_threads, threads = meta_gradient(model, batch)
        assert torch.get_num_threads() == 2  # the workers' one-thread setting does not leak out
    finally:
        torch.set_num_threads(1)
    assert out_threads.loss.item() == pytest.approx(out_loop.loss.item(), abs=1e-6)
    assert out_threads.accuracy.item() == pytest.approx(out_loop.accuracy.item())
    assert_close(loop, threads)


@pytest.mark.parametrize("name", ALL)
def test_the_meta_gradient_equals_the_plain_reference_loop(name, batch):
    model = small(name)
    _, ours = meta_gradient(model, batch)
    model.zero_grad(set_to_none=True)
    reference_backward(model, batch)
    reference = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    assert_close(ours, reference)


def test_second_and_first_order_meta_gradients_differ_and_are_finite(batch):
    _, second = meta_gradient(small("maml"), batch)
    _, first = meta_gradient(small("maml", first_order=True), batch)
    assert all(torch.isfinite(g).all() for g in second + first)
    difference = sum((a - b).norm() ** 2 for a, b in zip(second, first)).sqrt()
    assert difference > 1e-3 * sum(a.norm() ** 2 for a in second).sqrt()


def test_bf16_autocast_gives_a_close_finite_loss(batch):
    """The mixed-precision vmap path (the default on CUDA), exercised here with the CPU's bf16 autocast."""
    full, _ = meta_gradient(small("maml"), batch)
    mixed, grads = meta_gradient(small("maml", precision="bf16", vectorize="batched"), batch)
    assert abs(mixed.loss.item() - full.loss.item()) < 0.05
    assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)


# --------------------------------------------------------------------------- each algorithm's own property


def test_meta_sgd_learned_rates_receive_gradients_and_change(batch):
    model = small("metasgd")
    before = {k: v.detach().clone() for k, v in model.inner_lrs.items()}
    optimizer = model.configure_optimizer(1e-3)
    model.outer_loss(batch).loss.backward()
    grads = [p.grad for p in model.inner_lrs.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.inner_lrs.items())
    summary = model.internals()["inner_lr"]
    assert [r["parameter"] for r in summary] == list(model.task_params(1))
    assert {"mean", "abs_mean", "min", "max"} <= set(summary[0])
    json.dumps(model.internals())


def test_the_learned_optimizer_starts_as_sgd_and_its_network_receives_gradients(batch, omniglot):
    model = small("learned-opt")
    ep = batch.task(0)
    start = model.task_params(5, detach=True)
    learned = model.adapt_params(start, ep.support_x, ep.support_y, 2, second_order=False)
    plain = model.adapt_params(start, ep.support_x, ep.support_y, 2, second_order=False, update=sgd(0.1))
    assert all(torch.allclose(learned[k], plain[k], atol=1e-6) for k in start)

    optimizer = model.configure_optimizer(1e-2)
    for _ in range(2):  # the last layer starts at zero, so the first layer's gradient appears at the second step
        optimizer.zero_grad()
        out = model.outer_loss(batch)
        out.loss.backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.update_net.parameters())
    assert {"sgd_accuracy", "learned_minus_sgd"} <= set(out.extras)
    assert len(model.internals()["update_curve"]["grad"]) == len(model.internals()["update_curve"]["update"])


def test_reptile_moves_the_weights_toward_the_adapted_ones(batch):
    model = small("reptile", outer_optimizer="sgd", inner_steps=3, inner_batch=7)  # the third batch wraps round
    start = {k: v.detach().clone() for k, v in model.task_params(5).items()}
    adapted, size, lr = [], model.hparams.inner_batch, model.hparams.inner_lr
    for i in range(batch.support_x.shape[0]):
        ep = batch.task(i)  # meta-training adapts on the task's support and query images, shot by shot
        per_class = [torch.cat([ep.support_x[ep.support_y == c], ep.query_x[ep.query_y == c]]) for c in range(5)]
        x = torch.stack(per_class, 1).flatten(0, 1)
        y = torch.arange(5).repeat(len(x) // 5)
        params = model.task_params(5, detach=True)
        for step in range(model.hparams.inner_steps):  # plain SGD, a new mini-batch of `size` images each step
            pick = (step * size + torch.arange(size)) % len(x)
            loss = F.cross_entropy(model.logits(params, x[pick]), y[pick])
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
        adapted.append(params)
    target = {k: torch.stack([a[k].detach() for a in adapted]).mean(0) for k in start}
    optimizer = model.configure_optimizer(0.5)
    model.outer_loss(batch).loss.backward()
    optimizer.step()
    after = {k: v.detach() for k, v in model.task_params(5).items()}
    for k in start:
        if k in HEAD:
            continue
        assert torch.allclose(after[k], start[k] + 0.5 * (target[k] - start[k]), atol=1e-6)
    assert sum((after[k] - target[k]).norm() for k in start) < sum((start[k] - target[k]).norm() for k in start)


def test_the_meta_network_writes_fast_weights_that_change_with_the_support_set(omniglot):
    model = small("metanet")
    pool, rng = omniglot.pool("train"), np.random.default_rng(3)
    a, b = sample_episode(pool, 5, 1, 3, rng), sample_episode(pool, 5, 1, 3, rng)
    with torch.no_grad():
        keys_a, fast_a = model.fast_weights(model.embed(a.support_x), a.support_y, 5)
        keys_b, fast_b = model.fast_weights(model.embed(b.support_x), b.support_y, 5)
        again = model.fast_weights(model.embed(a.support_x), a.support_y, 5)[1]
    assert fast_a.shape == (5, 5, model.encoder.out_features())
    assert torch.equal(fast_a, again)
    assert (fast_a - fast_b).abs().max() > 1e-3 and (keys_a - keys_b).abs().max() > 1e-3
    queries = a.query_x
    assert not torch.allclose(model.adapt(a.support_x, a.support_y, 5)(queries),
                              model.adapt(b.support_x, b.support_y, 5)(queries))


@pytest.mark.parametrize("name", ALL)
def test_adapt_works_for_any_number_of_ways_even_under_no_grad(name, omniglot):
    model = small(name).eval()
    ep = sample_episode(omniglot.pool("test"), 12, 1, 2, np.random.default_rng(4))
    with torch.no_grad():
        predict = model.adapt(ep.support_x, ep.support_y, 12)
        logits = predict(ep.query_x)
    assert logits.shape == (24, 12) and torch.isfinite(logits).all()
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("hparams, field", [
    ({"inner_steps": 0}, "inner_steps"), ({"inner_lr": -1.0}, "inner_lr"), ({"vectorize": "gpu"}, "vectorize"),
    ({"precision": "fp8"}, "precision"), ({"test_inner_steps": 1.5}, "test_inner_steps"),
    ({"first_order": "yes"}, "first_order"), ({"hidden": 0}, "hidden"),
])
def test_bad_hyper_parameters_are_refused_with_the_field_named(hparams, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(algorithm="maml", hparams=hparams)


@pytest.mark.parametrize("name, hparams, field", [
    ("reptile", {"first_order": False}, "first_order"), ("reptile", {"outer_optimizer": "rmsprop"}, "outer_optimizer"),
    ("metanet", {"meta_hidden": 0}, "meta_hidden"), ("learned-opt", {"momentum": 1.0}, "momentum"),
    ("anil", {"inner_step": 3}, "no hyper-parameter"),
])
def test_each_algorithm_validates_its_own_hyper_parameters(name, hparams, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(algorithm=name, hparams=hparams)


def test_each_algorithm_has_its_own_hyper_parameter_type_with_defaults():
    for name in ALL:
        defaults = REGISTRY[name].make_hparams({})
        assert type(defaults).__dataclass_params__.frozen
    assert REGISTRY["fomaml"].make_hparams({}).first_order and not REGISTRY["maml"].make_hparams({}).first_order
    assert type(REGISTRY["maml"].make_hparams({})) is not type(REGISTRY["anil"].make_hparams({}))


# --------------------------------------------------------------------------- real training


def short_config(name: str, **changes) -> TrainConfig:
    hparams = {"hidden": 32} if name == "metanet" else {"hidden": 32, "inner_steps": 2, "inner_lr": 0.1}
    if name == "learned-opt":
        hparams["compare_sgd"] = False
    base = dict(algorithm=name, dataset="omniglot", n_way=5, k_shot=1, n_query=5, meta_batch=2,
                steps=40 if name == "reptile" else 20,  # Reptile, first order, learns slowest
                meta_lr=5e-3, val_every=20, val_episodes=5, log_every=10, seed=0, hparams=hparams)
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("name", ALL)
def test_every_algorithm_beats_chance_by_a_wide_margin_after_a_short_training(name, omniglot, tmp_path):
    """Twenty steps of two 5-way 1-shot tasks (seconds). Untrained, these models score about
    0.37 (gradient-based, adapting at test time) or 0.18 (metanet) on these episodes; trained,
    0.50 (reptile) to 0.57 when measured."""
    config = short_config(name)
    run_dir = runs.create_run(tmp_path, config, name)
    records = list(train(config, run_dir))
    assert [r["step"] for r in records] == list(range(10, config.steps + 1, 10))
    _, model = runs.load_model(run_dir)
    result = meta_test(model, omniglot.pool("test"), 5, 1, 5, episodes=20, seed=0)
    assert result["accuracy"] > 0.45  # chance is 0.2
    ep = sample_episode(omniglot.pool("test"), 5, 1, 1, np.random.default_rng(9))
    assert model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x).shape == (5, 5)


def test_the_bench_prints_one_json_object_per_configuration(omniglot):
    proc = subprocess.run([sys.executable, "-m", "lab", "bench", "algorithms", "--json", "--algorithms", "metanet",
                           "--meta-batch", "1", "--reps", "1", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert [r["algorithm"] for r in out] == ["metanet"]
    keys = {"algorithm", "n_way", "k_shot", "inner_steps", "meta_batch", "device", "tasks_per_s",
            "reference_tasks_per_s", "ratio", "peak_mem_mb"}
    assert all(keys <= set(r) and r["tasks_per_s"] > 0 and r["ratio"] > 0 for r in out)


# --------------------------------------------------------------------------- the 10-minute checks (slow)


TEN_MINUTE_HPARAMS = {"metanet": {}, "fomaml": {"inner_steps": 5, "test_inner_steps": 10},
                      "reptile": {"inner_steps": 5, "test_inner_steps": 10}}  # else 2 steps
# with a cosine schedule; the others at a constant 2e-3
TEN_MINUTE_META_LR = {"maml": 3e-3, "metasgd": 3e-3, "learned-opt": 3e-3, "fomaml": 5e-3, "reptile": 2e-3}


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_ten_minutes_of_training_reach_90_percent_on_5_way_1_shot(name, omniglot, tmp_path):
    """The accuracy floor on a CPU: ten minutes of meta-training on the whole machine (PyTorch's
    default threads), then 1000 meta-test episodes. Run on an otherwise idle machine with
    ``python -m pytest -m slow tests/test_algorithms.py -k ten_minutes``."""
    config = TrainConfig(algorithm=name, dataset="omniglot", n_way=5, k_shot=1, n_query=5,
                         meta_batch=8 if name == "metanet" else 4,
                         steps=10**6, minutes=10, meta_lr=TEN_MINUTE_META_LR.get(name, 2e-3),
                         lr_schedule="cosine" if name in TEN_MINUTE_META_LR else "constant", val_every=200,
                         val_episodes=100, log_every=50, seed=0, hparams=TEN_MINUTE_HPARAMS.get(name, {"inner_steps": 2}))
    run_dir = runs.create_run(tmp_path, config, name)
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        list(train(config, run_dir))
        _, model = runs.load_model(run_dir)
        result = meta_test(model, omniglot.pool("test"), 5, 1, 15, episodes=1000, seed=0)
    finally:
        torch.set_num_threads(1)
    assert result["accuracy"] >= 0.90, result
