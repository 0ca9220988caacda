import os

import pytest

# Tests never reach a hub: hub-format loading is exercised against local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box spinning OpenMP workers make
    each small matmul ~100x slower. The stage entry point (set_threads) raises it; put it back afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Modules that build and run pipeline projects (minutes): `make test-fast` leaves them out (-m "not slow").
SLOW_MODULES = {"test_algorithms_e2e", "test_pipeline_e2e", "test_crash_resume", "test_concurrency", "test_caching",
                "test_rejection_sampling_stages", "test_stage_inputs", "test_safety", "test_gpu_path", "test_registry",
                "test_seeds"}


def _in_file_order(items):
    """pytest-randomly shuffles modules and the tests inside them (`make test` runs in random order). A module marked
    `in_file_order` is one scenario over one shared project: its tests keep their file order, at the random place
    pytest-randomly gave the module."""
    groups, order = {}, []
    for i, item in enumerate(items):
        key = item.module.__name__ if getattr(item, "module", None) else None
        if key not in groups:
            groups[key], order = [], order + [key]
        groups[key].append(item)
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
    Tests of SLOW_MODULES are marked `slow`; modules marked `in_file_order` keep their order."""
    import importlib.util

    import torch

    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    _in_file_order(items)

    has_gpu = torch.cuda.is_available()
    has_vllm = has_gpu and importlib.util.find_spec("vllm") is not None
    for item in items:
        if "gpu" not in item.keywords:
            continue
        if not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine)"))
        elif "vllm" in item.keywords and not has_vllm:
            item.add_marker(pytest.mark.skip(reason="needs vLLM: pip install -e '.[vllm]'"))
