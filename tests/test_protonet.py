import numpy as np
import torch
from torch.func import functional_call

from lab.algorithms import REGISTRY, build
from lab.algorithms.protonet import prototypes
from lab.config import TrainConfig
from lab.episodes import sample_episode
from lab.models import Conv4


def test_conv4_maps_28_by_28_images_to_64_features():
    net = Conv4()
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 64)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.out_channels == 64 and c.kernel_size == (3, 3) for c in convs)


def test_conv4_can_be_called_functionally_with_other_weights():
    net = Conv4()
    x = torch.rand(2, 1, 28, 28)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert torch.allclose(functional_call(net, params, (x,)), net(x))
    params = {k: torch.zeros_like(v) for k, v in params.items()}
    assert torch.count_nonzero(functional_call(net, params, (x,))) == 0


def test_an_embedding_does_not_depend_on_the_rest_of_its_batch():
    net = Conv4()
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)


def test_prototypes_are_class_means():
    emb = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    expected = torch.stack([emb[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(prototypes(emb, labels, 3), expected)
    batched = prototypes(emb.expand(2, 6, 4), labels.expand(2, 6), 3)
    assert torch.allclose(batched[1], expected)


def test_protonet_is_registered_and_adapts_to_any_number_of_ways(digits):
    model = build(TrainConfig(algorithm="protonet"))
    assert REGISTRY["protonet"] is type(model) and model.name == "protonet"
    ep = sample_episode(digits.pool("test"), 12, 1, 2, np.random.default_rng(0))
    logits = model.adapt(ep.support_x, ep.support_y, 12)(ep.query_x)
    assert logits.shape == (24, 12)


def test_a_support_image_is_classified_as_its_own_class(digits):
    model = build(TrainConfig(algorithm="protonet"))
    ep = sample_episode(digits.pool("test"), 5, 1, 1, np.random.default_rng(0))
    predict = model.adapt(ep.support_x, ep.support_y, 5)
    assert predict(ep.support_x).argmax(-1).tolist() == list(range(5))
