"""Data-parallel gradient and sharded LMO: 2 gloo processes must reproduce 1 process.

The objective is a small MLP classifier on fixed labelled batches of two tasks; the
pool is random fine-tunes of it. Each configuration is run once in this process and
once in two CPU processes joined by ``torch.distributed`` (gloo); the selections must be
equal and the merged weights allclose (sums are re-associated over ranks).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fusion_bench_fw.core import FrankWolfeConfig, frank_wolfe, plan_vertices
from fusion_bench_fw.core.distributed import Communicator, torch_distributed_communicator
from fusion_bench_fw.core.objective import Batch, BatchedObjective, functional_forward
from fusion_bench_fw.core.stores import InMemoryVertexStore

CONFIGS = {
    "hard_layer": dict(variant="hard", granularity="layer", max_iters=4),
    "soft_task_cosine": dict(
        variant="soft", granularity="task", lmo_score="cosine", soft_select="topk", k=2, max_iters=3, inner_steps=5
    ),
    # the sketched LMO: sketches made over ranks (each its own share, then summed), re-checks sharded
    "hard_layer_sketched": dict(variant="hard", granularity="layer", max_iters=4, lmo_sketch=8, lmo_recheck=2),
}


def _module():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _problem():
    module = _module()
    pre = {k: v.detach().clone() for k, v in module.named_parameters()}
    g = torch.Generator().manual_seed(1)
    models = {"_pretrained_": pre}
    for i in range(5):
        models[f"m{i}"] = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in pre.items()}
    batches = {}
    for task in ("a", "b"):  # 5 + 5 batches of uneven sizes: ranks get unequal shares
        batches[task] = [
            Batch((torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)), n) for n in (4, 3, 4, 2, 4)
        ]
    return module, models, batches


def _loss(module, params, inputs, task):
    x, y = inputs
    return F.cross_entropy(functional_forward(module, params, x), y)


def _run(name: str, comm: Communicator, checkpoint_dir=None):
    """With ``checkpoint_dir``: stop after 2 iterations, then resume from the checkpoint."""
    module, models, batches = _problem()
    objective = BatchedObjective(module, batches, _loss, communicator=comm)
    store = InMemoryVertexStore(models)
    candidates = [n for n in models if n != "_pretrained_"]
    init = {"_pretrained_": 1.0 - 0.3 * 5, **{n: 0.3 for n in candidates}}
    config = FrankWolfeConfig.build(**CONFIGS[name])
    kwargs = dict(progress=False, communicator=comm)
    if checkpoint_dir is not None:
        path = os.path.join(checkpoint_dir, f"{name}.safetensors")
        first = FrankWolfeConfig.build(**{**CONFIGS[name], "max_iters": 2})
        plan = plan_vertices(candidates, init, first, len(objective.task_names))
        frank_wolfe(objective, store, plan, first, checkpoint_path=path, **kwargs)
        if comm.distributed:  # rank 0 must have written the checkpoint before anyone resumes
            comm.all_reduce_sum(torch.zeros(1))
        kwargs.update(checkpoint_path=path, resume=True)
    plan = plan_vertices(candidates, init, config, len(objective.task_names))
    result = frank_wolfe(objective, store, plan, config, **kwargs)
    selected = [r.selected for r in result.history.iterations]
    losses = [r.loss for r in result.history.iterations]
    return selected, losses, {k: v.clone() for k, v in result.params.items()}


def _worker(rank: int, world: int, port: int, out_dir: str):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        comm = torch_distributed_communicator()
        assert comm.world_size == world and comm.rank == rank
        results = {name: _run(name, comm) for name in CONFIGS}
        results["resumed"] = _run("hard_layer", comm, checkpoint_dir=out_dir)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", [*CONFIGS, "resumed"])
def test_two_gloo_processes_match_one_process(name, two_process_results):
    torch.set_num_threads(1)
    selected, losses, params = _run("hard_layer" if name == "resumed" else name, Communicator())
    for rank, results in enumerate(two_process_results):
        d_selected, d_losses, d_params = results[name]
        assert d_selected == selected, f"rank {rank} selected differently"
        assert d_losses == pytest.approx(losses, rel=1e-5, abs=1e-7)
        for k in params:
            torch.testing.assert_close(d_params[k], params[k], rtol=1e-5, atol=1e-6)


def test_shards_partition_the_work_and_sum_is_the_reduction():
    comms = [Communicator(r, 3, lambda t: t) for r in range(3)]
    items = list(range(10))
    shares = [c.share(items) for c in comms]
    assert sorted(x for s in shares for x in s) == items
    assert all(abs(len(s) - len(items) / 3) < 1 for s in shares)
    with pytest.raises(ValueError, match="rank"):
        Communicator(2, 2)


def test_objective_shards_sum_to_the_full_gradient():
    """Simulated ranks: per-rank partial losses/grads (no reduction) add up to the full ones."""
    module, models, batches = _problem()
    params = models["m0"]
    full = BatchedObjective(module, batches, _loss).loss_and_grad(params)
    parts = [
        BatchedObjective(module, batches, _loss, communicator=Communicator(r, 3, lambda t: t)).loss_and_grad(params)
        for r in range(3)
    ]
    assert sum(p.loss for p in parts) == pytest.approx(full.loss, rel=1e-6)
    for k in params:
        torch.testing.assert_close(sum(p.grads[0][k] for p in parts), full.grads[0][k], rtol=1e-5, atol=1e-6)
