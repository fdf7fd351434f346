"""K-means of embedded tasks and its checks, all from scikit-learn: inertia, silhouette, BIC, ARI, NMI, PCA, t-SNE."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from lab.clustering.embeddings import embed_tasks
from lab.clustering.sources import load_source

GRADIENT_DIMS = 32  # PCA components kept of the (37,056-dimensional) gradient embedding

@dataclass
class FeatureMap:
    """The fixed map from raw embeddings to the space K-means works in: centre, then project.

    ``components`` is ``(p, D)`` (a PCA basis) or ``None`` for the identity.
    """

    mean: np.ndarray
    components: np.ndarray | None = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float64) - self.mean
        return x if self.components is None else x @ self.components.T


def fit_feature_map(raw: np.ndarray, embedding: str, seed: int = 0) -> FeatureMap:
    """Centre the embeddings; the high-dimensional gradient embedding is also reduced by PCA."""
    if embedding != "gradient" or np.shape(raw)[1] <= GRADIENT_DIMS:
        return FeatureMap(np.asarray(raw, dtype=np.float64).mean(0))
    from sklearn.decomposition import PCA

    # In float32, as the embeddings are made, with four power iterations of the randomized solver:
    # enough for the few leading components kept, at a fraction of float64's cost.
    pca = PCA(min(GRADIENT_DIMS, len(raw)), svd_solver="randomized", iterated_power=4,
              random_state=seed).fit(np.asarray(raw, dtype=np.float32))
    return FeatureMap(pca.mean_, pca.components_)


def kmeans(features: np.ndarray, k: int, seed: int = 0) -> dict:
    """K-means (scikit-learn) of ``features`` ``(n, p)``: labels, centroids, inertia, silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    if not 1 <= k <= len(features):
        raise ValueError(f"k: must be between 1 and the number of tasks ({len(features)}), not {k}")
    fit = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(features)
    distinct = len(set(fit.labels_))
    silhouette = float(silhouette_score(features, fit.labels_)) if 1 < distinct < len(features) else float("nan")
    return {"k": k, "labels": fit.labels_.astype(np.int64), "centroids": fit.cluster_centers_,
            "inertia": float(fit.inertia_), "silhouette": silhouette}


def scan_k(features: np.ndarray, ks, seed: int = 0, progress=None) -> list[dict]:
    """Inertia, silhouette and BIC for each K of ``ks``: the curves K is chosen from.
    ``progress(done, len(ks))`` is called after each K."""
    ks, out = list(ks), []
    reduced = _principal(features, seed)
    for k in ks:
        fit = kmeans(features, k, seed)
        out.append({key: fit[key] for key in ("k", "inertia", "silhouette")} | {"bic": mixture_bic(reduced, k, seed)})
        if progress is not None:
            progress(len(out), len(ks))
    return out


BIC_DIMS = 5  # principal components in which Gaussian mixtures are scored


def _principal(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """``features`` in their top :data:`BIC_DIMS` principal components (fewer when there are fewer)."""
    from sklearn.decomposition import PCA

    features = np.asarray(features, dtype=np.float64)
    dims = min(BIC_DIMS, *features.shape)
    return PCA(dims, random_state=seed).fit_transform(features) if dims < features.shape[1] else features


def mixture_bic(reduced: np.ndarray, k: int, seed: int = 0) -> float:
    """The Bayesian information criterion of a full-covariance Gaussian mixture of ``k`` components
    (scikit-learn) fitted to ``reduced``: lower is better; nan when there are too few points. EM starts
    from K-means and from points drawn from the data, and the better fit counts: K-means alone splits a
    wide group and merges two tight ones, and EM stays there."""
    from sklearn.mixture import GaussianMixture

    if not 1 <= k < len(reduced):
        return float("nan")
    return min(float(GaussianMixture(k, covariance_type="full", n_init=2, init_params=init, random_state=seed)
                     .fit(reduced).bic(reduced)) for init in ("kmeans", "random_from_data"))


def elbow_k(scan: list[dict]) -> int:
    """The K at the elbow of the inertia curve: farthest from the chord joining its two ends."""
    if len(scan) < 3:
        return scan[0]["k"]
    k = np.array([r["k"] for r in scan], dtype=float)
    y = np.array([r["inertia"] for r in scan], dtype=float)
    kn, yn = (k - k[0]) / (k[-1] - k[0]), (y - y.min()) / max(np.ptp(y), 1e-12)
    chord = yn[0] + (yn[-1] - yn[0]) * kn
    return int(k[np.argmax(np.abs(yn - chord))])


def suggest_k(scan: list[dict]) -> int:
    """The K of the lowest BIC: model-based clustering, which weighs how well a mixture of K Gaussians
    fits against its number of parameters, and does not need clusters of equal size or spread, as the
    elbow and the silhouette do. A scan without BIC falls back on the elbow, checked by the silhouette:
    the elbow's K when its silhouette is at least half the best one, else the best silhouette's K."""
    bics = {r["k"]: r["bic"] for r in scan if not math.isnan(r.get("bic", math.nan))}
    if bics:
        return min(bics, key=bics.get)
    elbow = elbow_k(scan)
    scored = {r["k"]: r["silhouette"] for r in scan if not math.isnan(r["silhouette"])}
    if not scored:
        return elbow
    best = max(scored, key=scored.get)
    return elbow if elbow in scored and scored[elbow] >= 0.5 * scored[best] > 0 else best


def agreement(groups, labels) -> dict:
    """How well clusters match the true groups: adjusted Rand index and normalised mutual information."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": float(adjusted_rand_score(groups, labels)),
            "nmi": float(normalized_mutual_info_score(groups, labels))}


def cluster_table(labels: np.ndarray, groups: list[str]) -> list[dict]:
    """Per cluster: size, dominant true group and purity (the dominant group's share)."""
    rows = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        members = [g for g, lab in zip(groups, labels) if lab == c]
        dominant, count = Counter(members).most_common(1)[0] if members else ("-", 0)
        rows.append({"cluster": c, "size": len(members), "dominant_group": dominant,
                     "purity": count / len(members) if members else float("nan")})
    return rows


def project(features: np.ndarray, method: str = "pca", dims: int = 2, seed: int = 0) -> np.ndarray:
    """A 2-D or 3-D view of ``features`` by PCA or t-SNE (scikit-learn) -> ``(n, dims)``."""
    if dims not in (2, 3):
        raise ValueError(f"dims: must be 2 or 3, not {dims}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(min(dims, *features.shape), random_state=seed).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
        return TSNE(dims, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    raise ValueError(f"method: must be 'pca' or 'tsne', not {method!r}")


def analyse(raw: np.ndarray, groups: list[str], k: int, embedding: str, seed: int = 0) -> dict:
    """K-means of embedded tasks at ``k``, with its agreement with the true groups and a table per cluster."""
    features = fit_feature_map(raw, embedding, seed)(raw)
    result = kmeans(features, k, seed)
    result.update(agreement(groups, result["labels"]))
    result["clusters"] = cluster_table(result["labels"], groups)
    return result


def cluster_report(model, source: str, n_tasks: int = 500, k: int | None = None, embedding: str = "representation",
                   n_way: int = 5, k_shot: int = 1, split: str = "test", seed: int = 0, data_dir: str | None = None,
                   folder: str | None = None, max_k: int = 20, strokes: str = "as-drawn") -> dict:
    """Embed ``n_tasks`` tasks of ``source``, K-means them, and score the clusters against the true groups.

    Without ``k`` the elbow and silhouette curves over K = 1..``max_k`` are computed and the
    K that :func:`suggest_k` draws from them is used. JSON-ready (``python -m lab cluster``).
    """
    tasks = load_source(source, split, data_dir, folder, strokes).sample(n_tasks, n_way, k_shot, 0, seed)
    raw = embed_tasks(model, tasks, embedding)
    features = fit_feature_map(raw, embedding, seed)(raw)
    out = {"source": source, "split": split, "embedding": embedding, "tasks": n_tasks, "n_way": n_way,
           "k_shot": k_shot, "seed": seed, "groups": dict(sorted(Counter(tasks.groups).items()))}
    if k is None:
        scan = scan_k(features, range(1, min(max_k, n_tasks - 1) + 1), seed)
        k = suggest_k(scan)
        out.update(scan=scan, elbow_k=elbow_k(scan), suggested_k=k)
    result = kmeans(features, k, seed)
    out.update(k=k, inertia=result["inertia"], silhouette=result["silhouette"],
               **agreement(tasks.groups, result["labels"]),
               sizes=np.bincount(result["labels"], minlength=k).tolist(),
               clusters=cluster_table(result["labels"], tasks.groups))
    return out
