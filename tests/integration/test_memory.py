"""Memory does not grow with the number of streamed candidates.

A fresh child process runs FW-hard (two iterations, so two full LMO passes) over N
memory-mapped safetensors candidates of 16 MiB each; its peak resident memory minus its
resident memory before the run must not grow from N=2 to N=12. Before the store released
its mapped pages, every candidate byte read stayed resident (about 160 MiB more at N=12).
The child's malloc returns freed memory at once, so RSS is live data, not heap slack.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    import torch
    torch.set_num_threads(1)
    from fusion_bench_fw.core import HardConfig, frank_wolfe, plan_vertices
    from fusion_bench_fw.core.stores import SafetensorsVertexStore
    from toy import QuadraticObjective

    directory, n, granularity = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    names = ["_pretrained_"] + [f"m{i}" for i in range(n)]
    paths = {m: os.path.join(directory, m + ".safetensors") for m in names}
    shapes = {f"w{j}": (1024, 1024) for j in range(4)}
    store = SafetensorsVertexStore(paths, list(shapes))
    target = {k: torch.zeros(s) for k, s in shapes.items()}
    config = HardConfig(granularity=granularity, max_iters=2, include_init_vertex=False)
    plan = plan_vertices(names[1:], {"_pretrained_": 1.0}, config, 1)

    def rss_mb(field="VmRSS"):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024

    before = rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reads = []
    tensor = store.tensor
    store.tensor = lambda name, key: reads.append((name, key)) or tensor(name, key)
    frank_wolfe(QuadraticObjective(target), store, plan, config, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(before=before, peak_before=peak_before, peak=peak, after=rss_mb(),
                          file_pages=rss_mb("RssFile"), reads=len(reads))))
    """
)


@pytest.fixture(scope="module")
def candidate_dir(tmp_path_factory):
    import torch

    from fusion_bench_fw.core.stores import save_safetensors_atomic

    directory = tmp_path_factory.mktemp("candidates")
    g = torch.Generator().manual_seed(0)
    for name in ["_pretrained_"] + [f"m{i}" for i in range(12)]:
        save_safetensors_atomic(
            {f"w{j}": torch.randn(1024, 1024, generator=g) for j in range(4)}, str(directory / f"{name}.safetensors")
        )
    return directory


def _run(directory, n, granularity):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/, where toy.py lives
    # a fixed malloc mmap threshold returns every freed tensor to the system at once, so
    # RSS measures live data, not what glibc's heap happens to retain
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MALLOC_MMAP_THRESHOLD_="131072",
        PYTHONPATH=os.pathsep.join([tests, os.path.dirname(tests), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), str(n), granularity],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_peak_memory_does_not_grow_with_the_number_of_candidates(candidate_dir, granularity):
    small, large = _run(candidate_dir, 2, granularity), _run(candidate_dir, 12, granularity)
    file_mb = 16.0
    # every candidate is read: N x 4 tensors in each of the two LMO passes, plus the
    # initial point and the one selected vertex per block in each update
    assert large["reads"] > small["reads"] >= 2 * 2 * 4
    growth_small = small["peak"] - small["before"]
    growth_large = large["peak"] - large["before"]
    # 10 more candidates (160 MiB more read per pass) may cost at most a fraction of one file
    assert growth_large - growth_small < 0.5 * file_mb, (small, large)
    # and no candidate pages stay mapped after the run (the store releases them)
    assert large["file_pages"] - small["file_pages"] < 0.5 * file_mb, (small, large)
    assert (large["after"] - large["before"]) - (small["after"] - small["before"]) < 0.5 * file_mb, (small, large)
