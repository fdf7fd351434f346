"""Augmentation of training episodes: seeded, shape-preserving, small, and off unless asked for."""

import torch

from lab import runs
from lab.augment import augment_episode, augment_images, step_generator
from lab.config import TrainConfig
from lab.episodes import sample_batch
from lab.training import train


def digit_batch(digits):
    import numpy as np

    return sample_batch(digits.pool("train"), 5, 1, 5, 2, np.random.default_rng(0))


def test_the_same_seed_and_step_augment_alike_and_another_step_differently(digits):
    batch = digit_batch(digits)
    a = augment_episode(batch, step_generator(0, 7))
    b = augment_episode(batch, step_generator(0, 7))
    c = augment_episode(batch, step_generator(0, 8))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.query_x, c.query_x)
    assert a.support_x.shape == batch.support_x.shape and torch.equal(a.query_y, batch.query_y)


def test_augmented_images_stay_close_to_their_originals(digits):
    x = digit_batch(digits).query_x.reshape(-1, 1, 28, 28)
    out = augment_images(x, step_generator(1, 0))
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    # each image stays far more like itself than like another digit image
    corr = torch.corrcoef(torch.cat([x.flatten(1), out.flatten(1)]))[: len(x), len(x):]
    assert (corr.diagonal() > 0.3).float().mean() > 0.9
    assert corr.diagonal().mean() > corr.mean() + 0.2


def test_a_run_augments_only_when_asked_and_records_it(tmp_path):
    config = TrainConfig(dataset="digits", steps=4, val_every=4, val_episodes=5, log_every=2, n_query=5)
    plain = [r["loss"] for r in train(config)]
    augmented = [r["loss"] for r in train(config.replace(augment=True), runs.create_run(tmp_path, config.replace(augment=True), "aug"))]
    assert plain != augmented
    assert runs.read_json(tmp_path / "aug" / "config.json")["augment"] is True
    assert [r["loss"] for r in train(config)] == plain  # no augmentation: the stream is the one of before
