"""Zoo recipes that join shipped models into one instead of training (``"join"`` in ``recipes.json``).

``python -m lab zoo train NAME`` on such a recipe joins its members' shipped Prototypical Networks
(:func:`lab.ensemble.join_protonets`), calibrates the result like every zoo model (its metric, then
its temperature), and ships it only when it answers meta-validation episodes of the recipe's split
better than its best member does as shipped, beyond the 95% interval of their paired difference: a
joined model costs its members' time and size together, and must earn them. The episodes are those of
the task shapes the metric is fitted on (5, 10 and 20 ways, 1 and 5 shots), the same for every model.
Its manifest records its members (their steps and sha256) and every model's score.
"""

from __future__ import annotations

import os

import numpy as np

from lab import runs, zoo
from lab.adaptation import FIT_SHAPES, shape_key
from lab.data import load_dataset
from lab.device import pick_device
from lab.ensemble import join_protonets
from lab.episodes import can_supply
from lab.evaluation import meta_test, paired_comparison

VALIDATION_EPISODES = 300  # per task shape


def train_joined(name: str, episodes: int = VALIDATION_EPISODES, device: str = "auto") -> dict:
    """Join recipe ``name``'s shipped members, calibrate, validate and ship; returns the manifest."""
    rec = zoo.recipe(name)
    if not rec.join:
        raise ValueError(f"zoo:{name} is trained, not joined: python -m lab zoo train {name}")
    manifests = {member: zoo.check_model(member) for member in rec.join}  # each shipped and whole
    out = zoo.model_path(name)
    tmp = out.with_name(f".{out.name}.new")
    torch_device = pick_device(device)
    config = rec.config
    pool = load_dataset(config.dataset, None, config.split_scheme, config.strokes).pool("val")
    shapes = [shape for shape in FIT_SHAPES if can_supply(pool, *shape, 15)]

    def validate(path) -> np.ndarray:
        """Accuracy on each validation episode, shape after shape."""
        model = runs.load_model(path, device=torch_device)[1]
        return np.concatenate([meta_test(model, pool, w, k, 15, episodes, 0, torch_device)["per_episode"]
                               for w, k in shapes])

    try:
        joined = join_protonets([f"{runs.ZOO_PREFIX}{m}" for m in rec.join], tmp)
        others = sum(p.stat().st_size for p in out.parent.glob("*.pt") if p != out)
        if joined["bytes"] > zoo.MAX_MODEL_BYTES or others + joined["bytes"] > zoo.MAX_ZOO_BYTES:
            raise ValueError(f"zoo:{name} would take {joined['bytes']:,} bytes: the caps are {zoo.MAX_MODEL_BYTES:,} "
                             f"a model and {zoo.MAX_ZOO_BYTES:,} in all ({others:,} taken)")
        calibration = zoo.calibrate_file(tmp, config)
        members = {m: validate(zoo.model_path(m)) for m in rec.join}
        joined_accs = validate(tmp)
        best = max(members, key=lambda m: members[m].mean())
        gain = paired_comparison(joined_accs, members[best])
        if gain["difference"] - gain["difference_ci95"] <= 0:
            raise ValueError(f"zoo:{name}: the joined model is not shipped: joined, the models answer {100 * gain['accuracy_a']:.2f}% of "
                             f"the validation episodes, {100 * gain['difference']:+.2f} ± {100 * gain['difference_ci95']:.2f}"
                             f" points from zoo:{best}'s {100 * gain['accuracy_b']:.2f}% alone, not beyond the interval")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {
        "name": name, "recipe": rec.summary, "paper": rec.paper, "config": joined["config"],
        "step": max(m["step"] for m in manifests.values()), "val_accuracy": gain["accuracy_a"],
        "val_gain": {"over": best, "difference": gain["difference"], "ci95": gain["difference_ci95"]},
        "validated_on": {"split": "val", "shapes": [shape_key(w, k) for w, k in shapes], "n_query": 15,
                         "episodes": episodes, "seed": 0},
        "members": [{"name": m, "step": manifests[m]["step"], "sha256": manifests[m]["sha256"],
                     "val_accuracy": float(members[m].mean())} for m in rec.join],
        "wall_time_s": round(sum(manifests[m].get("wall_time_s") or 0.0 for m in rec.join), 1),
        "sittings": [], "calibration": calibration, "bytes": out.stat().st_size, "sha256": zoo.sha256(out),
        "measured": {},
    }
    runs.write_json(zoo.manifest_path(name), manifest)
    return manifest
