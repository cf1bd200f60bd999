"""The solver's options: one frozen dataclass per Frank-Wolfe variant, checked once, when built.

:class:`FrankWolfeConfig` holds what both variants read; :class:`HardConfig` and
:class:`SoftConfig` add their own. Each dataclass is the one home of its options' defaults
and documentation (the FusionBench adapter and its Hydra configs are built from them). An
option of the other variant would be ignored, so :meth:`FrankWolfeConfig.build` refuses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from .lmo import GRANULARITIES, LMO_SCORES
from .merge_fns import MERGE_FNS, TIES_DISJOINT
from .steps import check_step_rule

SOFT_SELECTS = ("topk", "per_task")
SOFT_CONSTRAINTS = ("capped_simplex", "simplex_selected", "box", "none")
INNER_LOSSES = ("ce_train", "entropy_test")
INNER_OPTIMIZERS = ("adam", "sgd")
TRIM_SCOPES = ("per_tensor", "global")
LMO_RECHECK = 3  # lmo_recheck's default (the exact LMO refuses any other value: it would be ignored)


def check_choice(name: str, value: Any, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; use one of {tuple(options)}")


def check_positive_int(name: str, value: Any, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if zero_ok else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


@dataclass(frozen=True)
class FrankWolfeConfig:
    """Options both variants read (use :class:`HardConfig` or :class:`SoftConfig`).

    Args:
        granularity: the LMO's constraint set: ``task`` (one choice of checkpoint for the
            whole model) or ``layer`` (one per tensor: the product of per-tensor hulls).
        lmo_score: how the LMO ranks the vertices: ``inner`` (<gradient, vertex - iterate>,
            the paper's) or ``cosine`` (per-tensor cosine summed over the block, FusionBench's
            in-tree rule).
        max_iters: the number of Frank-Wolfe iterations.
        gap_tol: stop once the Frank-Wolfe gap is at or below this; null: run ``max_iters``.
        include_init_vertex: the starting point is also a vertex the LMO may pick.
        include_pretrained_vertex: the pretrained checkpoint is also a vertex the LMO may pick.
        lmo_sketch: 0: the exact LMO, which reads every candidate tensor once per iteration. m > 0: the
            sketched LMO (:mod:`.sketch`), which scores the candidates from count sketches of m buckets
            per tensor (made in one read of the pool and cached beside the run) and reads in full only
            the ``lmo_recheck`` best of each block, scored exactly. Exact stays the default until
            ``benchmarks/lmo_sketch.py`` (how often its choice differs, how much faster) says otherwise.
        lmo_recheck: the sketched LMO's re-check: how many of the best-estimated candidates of each
            block are scored exactly (per selecting gradient, and at least the number FW-soft selects);
            the selection is made among them. Read only with ``lmo_sketch`` > 0.
    """

    variant: ClassVar[str] = ""

    granularity: str = "layer"
    lmo_score: str = "inner"
    max_iters: int = 10
    gap_tol: float | None = None
    include_init_vertex: bool = True
    include_pretrained_vertex: bool = False
    lmo_sketch: int = 0
    lmo_recheck: int = LMO_RECHECK

    def __post_init__(self):
        if not self.variant:
            raise TypeError("FrankWolfeConfig holds the common options: build a HardConfig or a SoftConfig")
        self.check()

    def check(self) -> None:
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("lmo_score", self.lmo_score, LMO_SCORES)
        check_positive_int("max_iters", self.max_iters)
        if self.gap_tol is not None and not self.gap_tol >= 0:
            raise ValueError(f"gap_tol must be >= 0 or null, got {self.gap_tol!r}")
        check_positive_int("lmo_sketch", self.lmo_sketch, zero_ok=True)
        check_positive_int("lmo_recheck", self.lmo_recheck)
        if self.lmo_sketch == 0 and self.lmo_recheck != LMO_RECHECK:
            raise ValueError(
                f"lmo_recheck={self.lmo_recheck} is read only by the sketched LMO: set lmo_sketch (its sketch "
                "size, e.g. 1024) or remove lmo_recheck"
            )

    # what the solver asks of a variant (each answers for itself; its step: hard.HardStep, soft.SoftStep)
    @property
    def per_task_gradients(self) -> bool:
        """Whether the LMO needs each target task's gradient besides the total."""
        return False

    @property
    def tracks_coefficients(self) -> bool:
        """Whether every iterate stays a combination of the stored checkpoints (alpha is kept)."""
        return True

    @property
    def needs_inner_objective(self) -> bool:
        """Whether the run needs an objective besides the outer one."""
        return False

    def selection_size(self, n_tasks: int, n_vertices: int) -> int | None:
        """How many vertices one iteration selects (None: one per block, FW-hard)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """The variant and every option, flat (as a run's history records them)."""
        return {"variant": self.variant, **asdict(self)}

    @staticmethod
    def option_names(variant: str) -> list[str]:
        return [f.name for f in fields(CONFIGS[variant])]

    @staticmethod
    def build(variant: str, **options) -> FrankWolfeConfig:
        """The config of ``variant`` from flat options (as users pass them), refusing the
        options that only the other variant reads: they would be silently ignored."""
        check_choice("variant", variant, CONFIGS)
        own = set(FrankWolfeConfig.option_names(variant))
        for name in options:
            if name in own:
                continue
            users = [v for v in CONFIGS if name in FrankWolfeConfig.option_names(v)]
            if users:
                raise ValueError(
                    f"{name} is an FW-{users[0]} option; FW-{variant} never reads it: remove it (or run FW-{users[0]})"
                )
            raise ValueError(f"unknown FW option {name!r}; FW-{variant} takes {sorted(own)}")
        return CONFIGS[variant](**options)


@dataclass(frozen=True)
class HardConfig(FrankWolfeConfig):
    """FW-hard: a step toward the single LMO vertex (per block), theta += gamma_t * MergeFn(s - theta).

    Args:
        step_rule: ``line_search`` (golden section on [0, step_scale * 2/(t+2)] on the objective:
            measured best, see docs/defaults.md), ``fw_default`` (gamma_t = step_scale * 2/(t+2): textbook
            with step_scale 1, the authors' with 0.3 * step_size) or ``constant`` (gamma_t = step_scale).
        step_scale: the scale of the step rule; gamma_t is clamped to [0, 1].
        line_search_evals: objective evaluations per line search.
        merge_fn: ``task_arithmetic`` (the exact FW direction) or ``ties`` (trimmed, sign-elected:
            it may leave the hull, and the coefficients are then no longer tracked).
        ties_density: the fraction of the direction's entries TIES keeps.
        ties_trim_scope: TIES trims ``per_tensor`` or by one ``global`` magnitude threshold.
        ties_disjoint: TIES's disjoint merge: ``sum`` or ``mean``.
    """

    variant: ClassVar[str] = "hard"

    step_rule: str = "line_search"
    step_scale: float = 1.0
    line_search_evals: int = 8
    merge_fn: str = "task_arithmetic"
    ties_density: float = 0.2
    ties_trim_scope: str = "per_tensor"
    ties_disjoint: str = "sum"

    def check(self) -> None:
        super().check()
        check_step_rule(self.step_rule, self.step_scale)
        check_choice("merge_fn", self.merge_fn, MERGE_FNS)
        check_choice("ties_trim_scope", self.ties_trim_scope, TRIM_SCOPES)
        check_choice("ties_disjoint", self.ties_disjoint, TIES_DISJOINT)
        if not 0 < self.ties_density <= 1:
            raise ValueError(f"ties_density must be in (0, 1], got {self.ties_density!r}")

    @property
    def tracks_coefficients(self) -> bool:
        return self.merge_fn == "task_arithmetic"  # TIES leaves the hull


@dataclass(frozen=True)
class SoftConfig(FrankWolfeConfig):
    """FW-soft: take the top-k LMO vertices and optimise their step weights lambda on the same
    objective by projected gradient, theta += sum_j lambda_j (s_j - theta). Its defaults select
    task-wise, each target's gradient picking its own model by the cosine score, then tune the
    weights from 0.3 on the labelled objective (measured best; see docs/defaults.md).

    Args:
        k: ``topk``: how many vertices are selected; null: the number of target tasks.
        soft_select: ``topk`` (the k best by the total gradient) or ``per_task`` (each task's
            gradient picks its best vertex not yet picked: FusionBench's in-tree rule).
        soft_constraint: where lambda lives: ``capped_simplex`` (lambda >= 0, sum <= 1),
            ``simplex_selected`` (sum = 1), ``box`` ([0, 1] each) or ``none``.
        coef_granularity: one lambda per selected vertex and ``layer`` (tensor) or ``task`` (model).
        inner_steps: projected gradient steps on lambda per iteration.
        inner_lr: their learning rate.
        inner_optimizer: ``adam`` or ``sgd``.
        inner_init: the starting lambda of the first iteration; null: 1/(k+1) (1/k on
            ``simplex_selected``). The authors' 0.3 with k = N and ``none`` starts at Task Arithmetic(0.3).
        inner_init_later: the starting lambda of every later iteration (the authors' ``ada_coeff``,
            1e-2); null: as ``inner_init``.
        inner_loss: what the inner search minimises: ``ce_train`` (the outer objective: labelled
            cross-entropy on the fixed samples, the paper's text) or ``entropy_test`` (entropy of the
            merged model's predictions on fresh unlabelled test batches of the targets, AdaMerging-style:
            the authors' published runs; test-time adaptation). A deterministic inner loss keeps the best
            lambda seen (never worse than staying put); a stochastic one keeps the last, as AdaMerging does.
        inner_batch_size: ``entropy_test``: unlabelled test images per target task per inner step.
    """

    variant: ClassVar[str] = "soft"

    # what each default is and why: docs/defaults.md
    granularity: str = "task"
    lmo_score: str = "cosine"
    max_iters: int = 5
    include_init_vertex: bool = False
    k: int | None = None
    soft_select: str = "per_task"
    soft_constraint: str = "none"
    coef_granularity: str = "layer"
    inner_steps: int = 30
    inner_lr: float = 0.003
    inner_optimizer: str = "adam"
    inner_init: float | None = 0.3
    inner_init_later: float | None = 0.01
    inner_loss: str = "ce_train"
    inner_batch_size: int = 16

    def check(self) -> None:
        super().check()
        if self.k is not None:
            check_positive_int("k", self.k)
            if self.soft_select == "per_task":
                raise ValueError(
                    f"k={self.k} is not read by soft_select=per_task (one vertex per target task): "
                    "remove k, or use soft_select=topk"
                )
        check_choice("soft_select", self.soft_select, SOFT_SELECTS)
        check_choice("soft_constraint", self.soft_constraint, SOFT_CONSTRAINTS)
        check_choice("coef_granularity", self.coef_granularity, GRANULARITIES)
        check_positive_int("inner_steps", self.inner_steps, zero_ok=True)
        check_choice("inner_optimizer", self.inner_optimizer, INNER_OPTIMIZERS)
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr!r}")
        for name in ("inner_init", "inner_init_later"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] or null, got {value!r}")
        check_choice("inner_loss", self.inner_loss, INNER_LOSSES)
        check_positive_int("inner_batch_size", self.inner_batch_size)

    @property
    def per_task_gradients(self) -> bool:
        return self.soft_select == "per_task"

    @property
    def needs_inner_objective(self) -> bool:
        return self.inner_loss != "ce_train"

    def selection_size(self, n_tasks: int, n_vertices: int) -> int:
        """k: the number of target tasks (``per_task``, or k null), else k itself."""
        if self.soft_select == "per_task" or self.k is None:
            return min(n_tasks, n_vertices)
        if self.k > n_vertices:
            raise ValueError(
                f"k={self.k} is larger than the number of vertices in the pool ({n_vertices}); lower method.k"
            )
        return self.k

    def inner_start(self, t: int, k: int) -> float:
        """The inner search's starting lambda at iteration ``t`` with ``k`` selected vertices."""
        if t > 0 and self.inner_init_later is not None:
            return self.inner_init_later
        if self.inner_init is not None:
            return self.inner_init
        return 1.0 / k if self.soft_constraint == "simplex_selected" else 1.0 / (k + 1)


CONFIGS: dict[str, type[FrankWolfeConfig]] = {"hard": HardConfig, "soft": SoftConfig}
