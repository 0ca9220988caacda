"""Generation backends: one contract, two engines.

A backend turns ``[(prompt_id, prompt), ...]`` and a :class:`SamplingSpec` into rows of the samples contract
(``prompt_id, sample_idx, prompt, response, num_tokens, finish_reason, seed``), ``n`` per prompt, in prompt order.
Both backends
  * render prompts with the tokenizer's chat template and encode them with the same HF tokenizer call
    (so both see identical prompt ids, truncated to ``max_prompt_tokens``);
  * seed per batch of ``batch_size`` prompts: batch ``b`` uses seed ``seed + b`` (recorded in every row), so a
    rerun — or a shard computing batches ``[s, e)`` with ``seed + s`` — reproduces the same samples;
  * finish rows with :func:`alignloop.ml.inference.finish_row` (EOS kept in the count, text cut at stop strings).
The engines' random streams differ, so HF and vLLM give different (equally valid) samples for one seed.

``hf``: batched, KV-cached ``model.generate`` (CPU or GPU), ``n`` sequences expanded from one prompt encoding.
``vllm``: offline ``vllm.LLM.generate`` (GPU, ``pip install -e '.[vllm]'``): continuous batching over all
requests at once, ``n`` samples per request sharing the prompt's prefill, tensor parallel from params.
``auto``: vllm when it is installed and a CUDA GPU is visible, else hf.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    max_prompt_tokens: int
    batch_size: int = 64
    stop: tuple[str, ...] = field(default_factory=tuple)


def vllm_available() -> bool:
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def resolve(kind: str) -> str:
    """The backend ``kind`` ('auto' | 'hf' | 'vllm') stands for here; 'vllm' without vLLM or a GPU is an error."""
    if kind == "auto":
        return "vllm" if vllm_available() else "hf"
    if kind == "vllm" and not vllm_available():
        raise RuntimeError("generate.backend is 'vllm' but vLLM or a CUDA GPU is missing (fix: on a GPU machine "
                           "`pip install -e '.[vllm]'`, or set generate.backend: hf / auto)")
    if kind not in ("hf", "vllm"):
        raise ValueError(f"unknown generation backend {kind!r} (fix: auto, hf or vllm)")
    return kind


class HFBackend:
    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def load(cls, path: str, model_cfg) -> HFBackend:
        from alignloop.ml.modeling import load_causal_lm, load_tokenizer, to_device

        return cls(to_device(load_causal_lm(path, model_cfg)), load_tokenizer(path, model_cfg))

    def sample(self, prompts: list[tuple[str, object]], spec: SamplingSpec, *, first_idx: dict | None = None,
               desc: str = "generate") -> list[dict]:
        from alignloop.ml.inference import sample

        return sample(self.model, self.tokenizer, prompts, n=spec.n, max_new_tokens=spec.max_new_tokens,
                      temperature=spec.temperature, top_p=spec.top_p, batch_size=spec.batch_size, seed=spec.seed,
                      max_prompt_tokens=spec.max_prompt_tokens, stop=spec.stop, first_idx=first_idx, desc=desc)


class VLLMBackend:
    name = "vllm"

    def __init__(self, path: str, model_cfg, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5):
        from vllm import LLM

        from alignloop.ml.modeling import load_tokenizer

        self.tokenizer = load_tokenizer(path, model_cfg)
        # The HF tokenizer encodes prompts (identical ids to the hf backend); vLLM only needs one to detokenize
        # for stop strings, and loads the same files from `path`.
        self.llm = LLM(model=str(path), tokenizer=str(path), dtype=model_cfg.dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=model_cfg.max_length,
                       trust_remote_code=model_cfg.trust_remote_code, seed=0, enable_prefix_caching=True)

    @classmethod
    def load(cls, path: str, model_cfg, **kw) -> VLLMBackend:
        return cls(path, model_cfg, **kw)

    def sample(self, prompts: list[tuple[str, object]], spec: SamplingSpec, *, first_idx: dict | None = None,
               desc: str = "generate") -> list[dict]:
        from vllm import SamplingParams

        from alignloop.ml.inference import finish_row
        from alignloop.ml.modeling import render_prompt

        tok = self.tokenizer
        texts = [render_prompt(tok, p) for _, p in prompts]
        ids = tok(texts, add_special_tokens=False, truncation=True, max_length=spec.max_prompt_tokens)["input_ids"]
        requests, params, seeds = [], [], []
        for j, prompt_ids in enumerate(ids):
            batch_seed = spec.seed + j // spec.batch_size
            seeds.append(batch_seed)
            requests.append({"prompt_token_ids": prompt_ids})
            # One request per prompt: its n samples share the prefill. The request seed is derived from the batch
            # seed and the prompt's place in the batch, so it is fixed by (seed, batch_size, prompt order).
            params.append(SamplingParams(
                n=spec.n, temperature=spec.temperature, top_p=spec.top_p, top_k=-1, max_tokens=spec.max_new_tokens,
                seed=batch_seed * 1_000_003 + j % spec.batch_size, stop=list(spec.stop) or None,
                include_stop_str_in_output=True, skip_special_tokens=False,
            ))
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=True)
        rows = []
        for (pid, prompt), out, batch_seed in zip(prompts, outputs, seeds):
            base = (first_idx or {}).get(pid, 0)
            for k, o in enumerate(out.outputs):
                text, num_tokens, finish = finish_row(tok, list(o.token_ids), spec.stop)
                if o.finish_reason == "stop" and finish == "length":  # stopped on a stop token id vLLM knows
                    finish = "stop"
                rows.append({"prompt_id": pid, "sample_idx": base + k, "prompt": prompt, "response": text,
                             "num_tokens": num_tokens, "finish_reason": finish, "seed": batch_seed})
        return rows


def load_backend(kind: str, path: str, model_cfg, *, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5):
    """A backend for the policy at ``path``: ``kind`` is generate.backend (auto | hf | vllm)."""
    if resolve(kind) == "vllm":
        return VLLMBackend.load(path, model_cfg, tensor_parallel_size=tensor_parallel_size,
                                gpu_memory_utilization=gpu_memory_utilization)
    return HFBackend.load(path, model_cfg)


def spec_from(g, *, seed: int, max_prompt_tokens: int, n: int | None = None) -> SamplingSpec:
    """The SamplingSpec of a generate section ``g`` (``n`` overrides g.n, for budgets)."""
    return SamplingSpec(n=g.n if n is None else n, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                        top_p=g.top_p, seed=seed, max_prompt_tokens=max_prompt_tokens, batch_size=g.batch_size,
                        stop=tuple(g.stop))
