"""Model clustering: group tasks by similarity, train one expert per group, route new tasks.

In the manner of TSA-MAML (Zhou et al. 2021): tasks are embedded as vectors, K-means groups
them, each group gets a model fine-tuned from the global meta-learner on that group's tasks,
and a new task is answered by the expert of its nearest centroid.

- **Task sources** with known structure, so clusters can be checked against the truth:
  ``within-alphabet`` (Omniglot tasks whose classes all come from one alphabet; the alphabet is
  the true group) and ``mixed`` (tasks from Omniglot, MNIST, the bundled digits and optionally
  a folder of images; the dataset is the true group).
- **Task embeddings** by name (:data:`EMBEDDINGS`): ``representation`` (mean and spread of the
  support set's features under the encoder) and ``gradient`` (the gradient of the support loss of the
  meta-learned initialisation). Neither depends on the order or naming of the classes.
- **K-means**, PCA, t-SNE, the agreement scores and the Gaussian mixtures whose BIC suggests K all
  come from scikit-learn.
This package is the library; training cluster experts from it is :mod:`lab.experts`
(a ``clustered`` run, answered by :class:`lab.algorithms.clustered.ClusteredLearner`).
"""

from lab.clustering.sources import SOURCES, TaskSet, TaskSource, load_source  # noqa: F401
from lab.clustering.embeddings import (  # noqa: F401
    EMBEDDINGS, embed_support, embed_tasks, gradient_embedding, representation_embedding,
)
from lab.clustering.kmeans import (  # noqa: F401
    BIC_DIMS, FeatureMap, agreement, analyse, cluster_report, cluster_table, elbow_k, fit_feature_map, kmeans,
    mixture_bic, project, scan_k, suggest_k,
)
