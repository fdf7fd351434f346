"""Meta-learning algorithms behind one protocol, found by name in :data:`REGISTRY`.

Each algorithm is a :class:`~lab.algorithms.base.MetaLearner`: an ``outer_loss`` over a
batch of episodes for meta-training, and ``adapt(support_x, support_y, n_way)`` returning a
predictor for a new task, shared by meta-testing and the drawing pad.
"""

from lab.algorithms.base import MetaLearner, Predictor, StepOutput, register, REGISTRY, build  # noqa: F401
from lab.algorithms import protonet  # noqa: F401  (registers itself)
from lab.algorithms import maml, metasgd, learned_opt, reptile, metanet  # noqa: F401  (each registers itself)
from lab.algorithms import clustered  # noqa: F401,E402  (registers itself)
