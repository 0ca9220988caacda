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


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA GPU (and, for the vLLM backend, `pip install -e '.[vllm]'`): on a machine without
    one they are reported as skipped with that reason, never silently passed. Their CPU counterparts run here."""
    import importlib.util

    import torch

    has_gpu = torch.cuda.is_available()
    has_vllm = has_gpu and importlib.util.find_spec("vllm") is not None
    for item in items:
        if "gpu" not in item.keywords:
            continue
        if not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine)"))
        elif "vllm" in item.keywords and not has_vllm:
            item.add_marker(pytest.mark.skip(reason="needs vLLM: pip install -e '.[vllm]'"))
