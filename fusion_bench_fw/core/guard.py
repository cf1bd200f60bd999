"""The hold-out guard: a checkpoint enters the merge only where held-out labelled samples say it helps.

FW decides its direction and its step on one fixed set of labelled samples, and a checkpoint can
lower that objective without helping the tasks: a noise-trained model whose task vector points
the right way gets picked by the cosine LMO, and FW-soft's step weights, fitted on ~100 samples
per task, then overfit to it. The guard scores every move on other labelled samples of the same
tasks (drawn from the train split, disjoint from the objective's; never the test split):

* **the start** (a pretrained + task-vector combination, e.g. Task Arithmetic over every model):
  backward elimination, each model's term dropped (its coefficient given back to the pretrained
  model) while dropping it does not raise the held-out loss;
* **FW-soft's step**: the same elimination over the selected vertices' step weights, then the
  step is kept only if it lowers the held-out loss;
* **FW-hard's step**: kept only if it lowers the held-out loss.

A refused vertex is never selected again in that block (the LMO picks the next best), and every
refusal is in the history with both losses. A rejected step with no single vertex to blame (a
layer-wise FW-hard step, one vertex per tensor; an FW-soft step whose every vertex helped on its own)
ends the run: the iterate would not move again, so the guard is then held-out early stopping.
Costs forward passes on the held-out samples only.

The screen (:func:`screen_candidates`, ``method.screen=true``) asks a like question of the pool
before anything is merged, one checkpoint at a time: does the checkpoint itself take some target
task's held-out loss down from the pretrained model's by a fair share (``screen_share``) of what the
best checkpoint achieves there? One that does not (noise-trained, or another task's) leaves the run:
it is in no start (a FusionBench method's included) and no LMO.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
from torch import Tensor

from .objective import Objective


def eliminate(loss_without: Callable[[frozenset], float], members: Sequence[Hashable], loss_all: float):
    """Greedy backward elimination: drop the member whose removal lowers ``loss_without`` most, as
    long as a removal does not raise it. Returns (the dropped, in order, each with the loss after its
    removal and the loss before; the final loss).

    Each round scores every remaining member without it; a member whose removal raised the loss is
    not tried again (one more model in the merge rarely makes another's removal help), so the cost
    is about ``len(members)`` plus a few evaluations per dropped member."""
    dropped: list[tuple[Hashable, float, float]] = []
    current, removed = loss_all, frozenset()
    candidates = list(members)
    while candidates:
        scored = [(loss_without(removed | {m}), m) for m in candidates]
        candidates = [m for loss, m in scored if loss <= current]  # removals that do not hurt
        if not candidates:
            break
        best_loss, best = min((s for s in scored if s[1] in candidates), key=lambda s: s[0])
        dropped.append((best, best_loss, current))
        removed, current = removed | {best}, best_loss
        candidates.remove(best)
    return dropped, current


def screen_candidates(
    holdout,
    pretrained: Mapping[str, Tensor],
    weights_of: Callable[[str], Mapping[str, Tensor]],
    names: Sequence[str],
    share: float = 0.5,
) -> dict:
    """Keep a candidate only if, on some target task, its own weights take the held-out loss down from
    the pretrained model's by at least ``share`` of the largest such drop any candidate achieves there.

    Lower than the pretrained model alone is too weak a bar: a model fine-tuned on random labels
    predicts near-uniformly, and that alone lowers the cross-entropy wherever the pretrained model is
    confidently wrong (on the mini benchmark every noise-trained model but one passed it); the
    target's own model takes the loss much further. ``holdout.task_losses(params)``: each target's
    mean held-out loss; ``weights_of(name)``: the candidate's tensors. Returns the report: ``kept``,
    ``refused``, every candidate's per-task losses and each one's best share."""
    base = holdout.task_losses(pretrained)
    losses = {name: holdout.task_losses(weights_of(name)) for name in names}
    best_drop = {t: max([base[t] - own[t] for own in losses.values()] + [0.0]) for t in base}

    def share_of(name: str) -> float:
        """The candidate's best share over the targets (0 where no candidate lowers a target's loss)."""
        own = losses[name]
        return max([(base[t] - own[t]) / best_drop[t] for t in base if best_drop[t] > 0] + [0.0])

    shares = {name: share_of(name) for name in names}
    kept = [n for n in names if shares[n] >= share and shares[n] > 0]
    refused = [
        {"model": n, "share": shares[n], "why": f"lowers no target's held-out loss by {share:g} of the best drop"}
        for n in names
        if n not in kept
    ]
    return {
        "pretrained": base,
        "losses": losses,
        "best_drop": best_drop,
        "shares": shares,
        "kept": kept,
        "refused": refused,
        "share": share,
    }


class HoldoutGuard:
    """The guard of one run: the held-out objective, the refused (vertex, block) pairs, and the
    held-out loss of the current iterate (cached until it moves)."""

    def __init__(self, holdout: Objective, vertex_names: Sequence[str], n_blocks: int):
        self.holdout = holdout
        self.names = list(vertex_names)
        self.refused = torch.zeros(len(self.names), n_blocks, dtype=torch.bool)
        self._here: float | None = None
        self.stop: str | None = None  # why the run ends (a rejected step with nothing to refuse)

    # ------------------------------------------------------------------ selection
    def mask(self, scores: Tensor) -> Tensor:
        """The LMO scores (gradients x vertices x blocks) with refused vertices out of reach."""
        return scores.masked_fill(self.refused.unsqueeze(0), float("inf"))

    def refuse(self, chosen_row: Tensor) -> list[list[int]]:
        """Refuse the row's vertex in each block; returns the (vertex, block) pairs."""
        pairs = [[int(v), b] for b, v in enumerate(chosen_row.tolist())]
        for v, b in pairs:
            self.refused[v, b] = True
        return pairs

    def restore(self, records) -> None:
        """After a resume: the refusals the saved iterations recorded."""
        for record in records:
            for v, b in (record.guard or {}).get("refused_pairs", []):
                self.refused[v, b] = True

    def loss_here(self, theta) -> float:
        if self._here is None:
            self._here = self.holdout.loss(theta)
        return self._here

    def moved(self) -> None:
        self._here = None

    # ------------------------------------------------------------------ the start
    def check_start(self, theta, alpha: Tensor, basis: Sequence[str], read, pretrained: str, members: Sequence[str]):
        """Drop start terms that do not lower the held-out loss, in place on ``theta`` and ``alpha``
        (model ``i``'s coefficients go to ``pretrained``). Returns the report for the history."""
        pre = basis.index(pretrained)
        keys = list(theta)
        rows = {m: alpha[basis.index(m)].clone() for m in members}

        def without(removed: frozenset) -> dict[str, Tensor]:
            out = {}
            for p, key in enumerate(keys):
                value = theta[key].clone()
                for m in removed:
                    c = float(rows[m][p])
                    if c != 0.0:
                        delta = read(m, key).to(value) - read(pretrained, key).to(value)
                        value.sub_(delta, alpha=c)
                out[key] = value
            return out

        loss_all = self.loss_here(theta)
        dropped, final = eliminate(lambda r: self.holdout.loss(without(r)), list(members), loss_all)
        if dropped:
            new = without(frozenset(m for m, _, _ in dropped))
            for key in keys:
                theta[key].copy_(new[key])
            for m, _, _ in dropped:
                alpha[pre] += rows[m]
                alpha[basis.index(m)] = 0.0
            self._here = final
        return {
            "holdout_start": loss_all,
            "holdout_kept": final,
            "kept": [m for m in members if m not in {d[0] for d in dropped}],
            "refused": [
                {"model": m, "holdout_without": after, "holdout_with": before, "why": "dropping it did not raise it"}
                for m, after, before in dropped
            ],
        }

    # ------------------------------------------------------------------ the steps
    def check_weights(self, theta, combine: Callable[[Tensor], dict], lam: Tensor, chosen: Tensor):
        """FW-soft: zero the step weights of selected vertices whose removal does not raise the held-out
        loss, then keep the step only if it lowers it. ``combine(lam)``: the iterate after a step with
        weights ``lam`` (rows: the selected vertices, as in ``chosen``). Returns (weights, report)."""
        here = self.loss_here(theta)
        rows = [j for j in range(lam.shape[0]) if bool(lam[j].abs().sum() > 0)]
        if not rows:
            return lam, {"holdout_here": here, "holdout_move": here, "refused": [], "refused_pairs": [], "step": "none"}

        def without(removed: frozenset) -> float:
            kept = lam.clone()
            kept[list(removed)] = 0.0
            return self.holdout.loss(combine(kept))

        loss_move = without(frozenset())
        dropped, final = eliminate(without, rows, loss_move)
        kept = lam.clone()
        refused, pairs = [], []
        for j, after, before in dropped:
            kept[j] = 0.0
            pairs += self.refuse(chosen[j])
            refused.append(
                {
                    "vertex": self._describe(chosen[j]),
                    "holdout_without": after,
                    "holdout_with": before,
                    "why": "the step without it scores no worse on held-out samples",
                }
            )
        step = "kept"
        if final >= here:
            kept.zero_()
            step = f"rejected: held-out loss {final:.5g} >= {here:.5g} here"
            if not dropped:
                self.stop = f"guard: {step}, every selected vertex helped on its own"
        else:
            self._here = final
        report = {"holdout_here": here, "holdout_move": loss_move, "holdout_kept": final}
        return kept, {**report, "refused": refused, "refused_pairs": pairs, "step": step}

    def check_move(self, before: float, theta, chosen: Tensor) -> dict:
        """FW-hard: the step already taken to ``theta`` is kept only if it lowered the held-out loss
        from ``before``; else the caller restores theta, and the vertex is refused (task-wise: one
        vertex to blame) or the run ends (layer-wise: one vertex per tensor, none to blame alone)."""
        after = self.holdout.loss(theta)
        report = {"holdout_here": before, "holdout_move": after, "refused": [], "refused_pairs": [], "step": "kept"}
        if after < before:
            self._here = after
            return report
        self._here = before
        report["step"] = f"rejected: held-out loss {after:.5g} >= {before:.5g} here"
        if chosen.shape[1] > 1:
            self.stop = f"guard: {report['step']} (a layer-wise step)"
            return report
        report["refused_pairs"] = self.refuse(chosen[0])
        report["refused"] = [
            {"vertex": self._describe(chosen[0]), "holdout_without": before, "holdout_with": after, "why": "no lower"}
        ]
        return report

    def _describe(self, row: Tensor):
        """A selected row by name (task-wise) or as {name: blocks} (layer-wise)."""
        names = [self.names[int(v)] for v in row.tolist()]
        if len(names) == 1:
            return names[0]
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return counts
