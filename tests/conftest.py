import os

import pytest

# Tests never reach a hub: hub-format loading is exercised against local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# `make test` runs two workers on this machine's two cores: each worker, and every stage process it starts (they
# inherit this environment; set_threads honours it), takes its share of the cores. Two 2-thread torch processes on
# two cores spin against each other: measured, a reward-model stage took 49 s with 2 threads beside a busy core and
# 32 s with 1.
# The xdist controller imports this file before it starts the workers, which inherit its environment: a plain
# setdefault would hand them the controller's value (all cores) and each stage would run 2 threads beside another
# 2-thread stage (measured: a reward model 5x slower in the suite than alone). So the value this file set is
# recomputed in each worker; one the user exported is kept.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if "OMP_NUM_THREADS" not in os.environ or os.environ.get("ALIGNLOOP_TEST_THREADS_SET"):
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ["ALIGNLOOP_TEST_THREADS_SET"] = "1"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One MLflow sqlite store per module for stages run in-process (creating one takes a few seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    mp.setenv("ALIGNLOOP_ARTIFACT_ROOT", str(root / "artifacts"))
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield root
    mp.undo()


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box spinning OpenMP workers make
    each small matmul ~100x slower. The stage entry point (set_threads) raises it; put it back afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


os.environ.setdefault("DO_NOT_TRACK", "true")  # MLflow's usage telemetry: no network calls from ~200 stage processes
# Modules that build and run pipeline projects: `make test-fast` leaves them out (-m "not slow"). The numbers are
# their seconds in a full `make test` on the 2-core machine (measured; only their order matters): the two workers
# take modules longest first, so the long ones never start last and run alone.
SLOW_MODULES = {"test_pipeline_e2e": 800, "test_algorithms_e2e": 420, "test_crash_resume": 350, "test_hub_e2e": 170,
                "test_rejection_sampling_stages": 175, "test_concurrency": 165, "test_caching": 40, "test_registry": 30,
                "test_stage_inputs": 25, "test_scale_io": 25, "test_retention_project": 25, "test_multiprocess": 150, "test_seeds": 20,
                "test_gpu_path": 15, "test_safety": 5,
                "test_round_reward": 60, "test_general_prefs_e2e": 300}


def _order(items):
    """pytest-randomly shuffles modules and the tests inside them (`make test` runs in random order). Two changes
    to that order:
    - the modules that build pipelines come first, longest first (SLOW_MODULES), so that with two workers the
      minutes-long ones start at once and the quick ones (still shuffled) fill in around them, rather than one of
      them starting last and running alone (`make test` passes --no-loadscope-reorder so xdist keeps this order);
    - a module marked `in_file_order` is one scenario over one shared project: its tests keep their file order."""
    groups, order = {}, []
    for item in items:
        key = item.module.__name__ if getattr(item, "module", None) else None
        if key not in groups:
            groups[key], order = [], order + [key]
        groups[key].append(item)
    # Stable sort: the quick modules keep their shuffled order after the slow ones.
    order.sort(key=lambda key: -SLOW_MODULES.get(str(key).rsplit(".", 1)[-1], 0))
    out = []
    for key in order:
        group = groups[key]
        if any(item.get_closest_marker("in_file_order") for item in group):
            group = sorted(group, key=lambda it: (it.function.__code__.co_firstlineno, it.nodeid))
        out += group
    items[:] = out


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA GPU (and, for the vLLM backend, `pip install -e '.[vllm]'`): on a machine without
    one they are reported as skipped with that reason, never silently passed. Their CPU counterparts run here.
    Tests of SLOW_MODULES are marked `slow` and run first; modules marked `in_file_order` keep their order."""
    import importlib.util

    import torch

    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    _order(items)

    has_gpu = torch.cuda.is_available()
    has_vllm = has_gpu and importlib.util.find_spec("vllm") is not None
    for item in items:
        if "gpu" not in item.keywords:
            continue
        if not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine)"))
        elif "vllm" in item.keywords and not has_vllm:
            item.add_marker(pytest.mark.skip(reason="needs vLLM: pip install -e '.[vllm]'"))
