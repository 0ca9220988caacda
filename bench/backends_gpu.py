"""GPU: output tokens/s of the vLLM backend vs the batched HF backend, same model, prompts and settings, n=8.

No hub access on the GPU machines, so the model is built from config: a Llama of ~113M parameters
(hidden 768, 12 layers, 12 heads, MLP 3072) with the tokenizer trained on the embedded corpus, random weights,
saved as safetensors in bf16. Random weights rarely emit EOS, so both backends generate close to
--max-new-tokens per sample; tokens are counted identically (alignloop.ml.inference.finish_row). Each backend runs
through alignloop.ml.backends exactly as the generate stage calls it. Needs a CUDA GPU and `pip install -e '.[vllm]'`.

    python bench/backends_gpu.py --prompts 512 --n 8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _out import write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64, help="hf: prompts per generate() call")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from alignloop.ml.backends import HFBackend, SamplingSpec, VLLMBackend
    from alignloop.core.config import ArchConfig, ModelConfig
    from alignloop.ml.modeling import build_tiny_model, train_tokenizer
    from alignloop.core.synthetic import make_corpus

    corpus = make_corpus(num_prompts=max(a.prompts, 480), sft_per_prompt=2, pairs_per_prompt=1,
                         annotator_temperature=0.5, good_demo_fraction=0.35, seed=0)
    tok = train_tokenizer([r["prompt"] for r in corpus["prompts"]] + [r["response"] for r in corpus["sft"]], 1024)
    arch = ArchConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=1024)
    max_length = 64 + a.max_new_tokens
    model = build_tiny_model(arch, tok, max_length=max_length, seed=0).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    path = Path(tempfile.mkdtemp(prefix="alignloop-100m-"))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    cfg = ModelConfig(name_or_path=str(path), dtype="bfloat16", max_length=max_length)
    prompts = [(r["id"], r["prompt"]) for r in corpus["prompts"]][: a.prompts]
    spec = SamplingSpec(n=a.n, max_new_tokens=a.max_new_tokens, temperature=1.0, top_p=1.0, seed=0,
                        max_prompt_tokens=64, batch_size=a.batch_size)

    def timed(backend, label):
        backend.sample(prompts[: a.batch_size], spec)  # warm-up: CUDA graphs, kernels, allocator
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        rows = backend.sample(prompts, spec)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        tokens = sum(r["num_tokens"] for r in rows)
        print(f"{label}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.0f} tokens/s", flush=True)
        return tokens / seconds

    hf = HFBackend(model.to("cuda").eval(), tok)
    hf_tps = timed(hf, "hf (batched generate)")
    del hf, model
    torch.cuda.empty_cache()
    vllm_tps = timed(VLLMBackend(str(path), cfg, gpu_memory_utilization=a.gpu_memory_utilization), "vllm")
    summary = {"device": torch.cuda.get_device_name(0), "params": n_params, "tokens_per_s": {"hf": round(hf_tps),
               "vllm": round(vllm_tps)}, "vllm_vs_hf": round(vllm_tps / hf_tps, 2), "settings": vars(a)}
    write_result("backends_gpu", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
