"""Why the lab says what it says: an explanation of one prediction against a support set.

- **Why this class**: the nearest support example of each class in the model's embedding (the
  features its classifier reads: prototypes' space for ProtoNet, the encoder's output for the
  others), with distances, and a 2-D map (PCA, scikit-learn) of the support set with the image
  placed among it.
- **Where it looked**: Integrated Gradients (Captum) of the predicted class's logit over the
  28x28 input, and the contrast with the runner-up class.
- **Watch it adapt** (the gradient-based learners): after each inner step 0..k, the support loss,
  the image's probabilities and how far each layer moved; step k is the predictor's own output.

Every view answers for every algorithm of the registry, or says plainly why it does not apply.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients
from sklearn.decomposition import PCA

from lab.algorithms.inner import GradientLearner, conv4_features
from lab.algorithms.metanet import MetaNet
from lab.algorithms.protonet import ProtoNet

IG_STEPS = 32  # points on the path from the blank image to the drawing


def _model_for(model, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int):
    """The model that answers this support set: a clustered model's routed expert, else the model."""
    experts = getattr(model, "experts", None)
    if experts is not None and hasattr(model, "route"):
        return experts[int(model.route(support_x, support_y, n_way)[0])]
    return model


def embedding_function(model):
    """Images ``(n, 1, H, W)`` -> the features the model classifies, or None when it has none."""
    if isinstance(model, ProtoNet):
        return model.features
    if isinstance(model, MetaNet):
        return model.embed
    if isinstance(model, GradientLearner):
        params = {f"encoder.{k}": v for k, v in model.encoder.named_parameters()}
        return lambda x: conv4_features(params, x, model.groups)
    return None


def neighbours(embed, support_x, support_y, image, class_names) -> list[dict]:
    """For each class, its support example nearest to ``image`` (index into the support set) and the distance."""
    with torch.no_grad():
        e_support, e_image = embed(support_x), embed(image[None])[0]
    distances = (e_support - e_image).norm(dim=-1)
    out = []
    for c, name in enumerate(class_names):
        members = (support_y == c).nonzero().flatten()
        best = members[distances[members].argmin()]
        out.append({"class": name, "index": int(best), "distance": float(distances[best])})
    return sorted(out, key=lambda r: r["distance"])


def embedding_map(embed, support_x, support_y, image) -> dict:
    """The support set's embeddings and the image's, in the 2-D plane of the support set's PCA."""
    with torch.no_grad():
        points = torch.cat([embed(support_x), embed(image[None])]).double().numpy()
    pca = PCA(2, random_state=0).fit(points[:-1]) if len(points) > 2 else None
    xy = pca.transform(points) if pca is not None else np.zeros((len(points), 2))
    return {"support": xy[:-1].round(6).tolist(), "labels": support_y.tolist(), "image": xy[-1].round(6).tolist(),
            "explained_variance": pca.explained_variance_ratio_.round(6).tolist() if pca is not None else []}


def attribution(predictor, image: torch.Tensor, target: int, other: int | None) -> dict:
    """Integrated Gradients of logit ``target`` (and of ``target`` minus ``other``) over the image's pixels,
    from a blank image; each a ``(28, 28)`` list, with Captum's convergence delta."""
    ig = IntegratedGradients(lambda x: predictor(x))
    targets = [target] if other is None else [target, other]
    x = image[None].expand(len(targets), *image.shape).clone().requires_grad_()
    with torch.enable_grad():  # both classes in one batch; IG is linear, so the contrast is their difference
        attr, delta = ig.attribute(x, target=targets, n_steps=IG_STEPS, return_convergence_delta=True)
    attr = attr[:, 0].detach().cpu().numpy()
    out = {"target": attr[0], "delta": float(delta[0].abs())}
    if other is not None:
        out["contrast"] = attr[0] - attr[1]
    return out


def memory_read(model: MetaNet, support_x, support_y, image, n_way: int) -> list[dict]:
    """Which support examples a Meta Network's memory read attended to for ``image``, most first."""
    with torch.no_grad():
        keys, _ = model.fast_weights(model.embed(support_x), support_y, n_way)
        query = F.normalize(model.key(model.embed(image[None])), dim=-1)
        attention = (model.log_beta.exp() * query @ keys.T).softmax(-1)[0]
    order = attention.argsort(descending=True).tolist()
    return [{"index": i, "label": int(support_y[i]), "attention": float(attention[i])} for i in order]


def adaptation(model, support_x, support_y, image, n_way: int, temperature: float = 1.0) -> dict:
    """The inner loop a gradient-based learner runs on this support set, step by step (for a Meta
    Network, which support examples its memory read attended to)."""
    if isinstance(model, MetaNet):
        return {"applies": False, "memory": memory_read(model, support_x, support_y, image, n_way),
                "reason": "metanet does not adapt by gradient steps: it writes fast weights from the support set "
                          "in one pass and reads them by attention (the support examples it attended to are listed)"}
    if not isinstance(model, GradientLearner):
        return {"applies": False, "reason": f"{model.name} does not adapt by gradient steps: "
                                            "it answers from the support set in one pass"}
    steps = [(0, model.task_params(n_way, detach=True))]
    with torch.enable_grad():
        model.adapt_params(model.task_params(n_way, detach=True), support_x, support_y, model.test_steps,
                           second_order=False, update=model.test_update(n_way, len(support_y)),
                           on_step=lambda k, p: steps.append((k, {n: v.detach() for n, v in p.items()})))
    rows, before = [], None
    with torch.no_grad():
        for k, params in steps:
            logits = model.logits(params, image[None])[0] / temperature
            moved = {} if before is None else {
                name: float((params[name] - before[name]).abs().mean()) for name in params}
            rows.append({"step": k, "support_loss": float(model.support_loss(params, support_x, support_y)),
                         "probabilities": F.softmax(logits.float(), -1).tolist(), "moved": moved})
            before = params
    return {"applies": True, "steps": rows}


def explain(model, support_x: torch.Tensor, support_y: torch.Tensor, image: torch.Tensor, class_names,
            temperature: float = 1.0, predictor=None) -> dict:
    """Every view of the prediction of ``image`` (``(1, 28, 28)`` float in [0, 1]) against the support set
    (``(n, 1, 28, 28)``, labels ``(n,)``), JSON-ready. ``predictor``: the model already adapted to this
    support set (``model.adapt``), when the caller holds it."""
    n_way = len(class_names)
    model.eval()
    answering = _model_for(model, support_x, support_y, n_way)
    predictor = predictor or model.adapt(support_x, support_y, n_way)
    with torch.no_grad():
        probs = F.softmax(predictor(image[None])[0].float() / temperature, -1)
    order = probs.argsort(descending=True).tolist()
    out = {"prediction": class_names[order[0]], "probabilities": dict(zip(class_names, probs.tolist())),
           "runner_up": class_names[order[1]] if n_way > 1 else None}
    embed = embedding_function(answering)
    if embed is None:
        out["neighbours"] = out["map"] = {"applies": False, "reason": f"{answering.name} has no embedding to compare in"}
    else:
        out["neighbours"] = neighbours(embed, support_x, support_y, image, class_names)
        out["map"] = embedding_map(embed, support_x, support_y, image)
    attr = attribution(predictor, image, order[0], order[1] if n_way > 1 else None)
    out["attribution"] = {"class": class_names[order[0]], "map": attr["target"].round(6).tolist(),
                          "convergence_delta": attr["delta"], "method": f"Integrated Gradients ({IG_STEPS} steps, "
                                                                         "from a blank image)"}
    if "contrast" in attr:
        out["attribution"]["contrast"] = {"against": class_names[order[1]], "map": attr["contrast"].round(6).tolist()}
    out["adaptation"] = adaptation(answering, support_x, support_y, image, n_way, temperature)
    return out
