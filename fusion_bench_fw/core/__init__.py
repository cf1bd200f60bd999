"""FW-Merging's core: pure PyTorch, no FusionBench.

A run is: a :class:`VertexStore` of checkpoints, an :class:`Objective` (e.g. a
:class:`BatchedObjective` on fixed labelled batches), a solver config (:class:`HardConfig`
or :class:`SoftConfig`), a :class:`VertexPlan` from :func:`plan_vertices`, then
:func:`frank_wolfe`, which returns the merged tensors and the :class:`RunHistory`.
"""

from .config import FrankWolfeConfig, HardConfig, SoftConfig
from .distributed import SINGLE_PROCESS, Communicator
from .history import IterationRecord, RunHistory
from .objective import Batch, BatchedObjective, LossAndGrad, Objective, functional_forward
from .solver import FrankWolfeResult, frank_wolfe, materialise
from .stores import (
    CompositeVertexStore,
    InMemoryVertexStore,
    SafetensorsVertexStore,
    StoreError,
    VertexStore,
)
from .vertices import INIT_VERTEX, VertexPlan, plan_vertices, single_checkpoint, start_coefficients

__all__ = [
    "INIT_VERTEX",
    "SINGLE_PROCESS",
    "Batch",
    "BatchedObjective",
    "Communicator",
    "CompositeVertexStore",
    "FrankWolfeConfig",
    "FrankWolfeResult",
    "HardConfig",
    "InMemoryVertexStore",
    "IterationRecord",
    "LossAndGrad",
    "Objective",
    "RunHistory",
    "SafetensorsVertexStore",
    "SoftConfig",
    "StoreError",
    "VertexPlan",
    "VertexStore",
    "frank_wolfe",
    "functional_forward",
    "materialise",
    "plan_vertices",
    "single_checkpoint",
    "start_coefficients",
]
