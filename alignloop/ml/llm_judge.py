"""Pairwise judgments from any OpenAI-compatible chat endpoint (`vllm serve`, llama.cpp's server, a hosted API).

The official ``openai`` client does the HTTP: its own retries with exponential backoff on 429, 408/409 and 5xx and on
connection errors (honouring Retry-After), and a timeout per call. This module adds what it lacks for judging:
bounded concurrency over many calls, an on-disk cache keyed by (judge model, template, instruction, both
responses) so a rerun costs no calls, and errors that name the endpoint and the fix. The API key is passed in, is
never printed, and is scrubbed from any error text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from alignloop.core import files
from alignloop.core.judging import cache_key, parse_verdict, render


class JudgeError(files.DataError):
    """The endpoint is unreachable, refuses the key or model, or answers with no verdict."""


@dataclass(frozen=True)
class Request:
    instruction: str
    response_1: str
    response_2: str


@dataclass(frozen=True)
class Judgment:
    verdict: int | None  # 1 or 2, None when the answer named neither
    answer: str
    cached: bool


class LLMJudge:
    def __init__(self, *, base_url: str, model: str, api_key: str, template: str, cache_dir: str | Path,
                 timeout_s: float = 60.0, max_retries: int = 5, concurrency: int = 8, max_tokens: int = 8,
                 temperature: float = 0.0, key_env: str = "the API key variable"):
        from openai import OpenAI

        self.base_url, self.model, self.template = base_url, model, template
        self._key, self._key_env = api_key, key_env
        self.cache_dir = Path(cache_dir)
        self.concurrency, self.max_tokens, self.temperature = concurrency, max_tokens, temperature
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)
        self.calls = 0  # requests that reached the endpoint (a retried request counts once)

    # --- cache: one small JSON file per judgment, written atomically --------------------------------
    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):  # absent, or torn by an old crash: ask again
            return None

    def _store(self, key: str, entry: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, entry)

    # --- calls --------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _ask(self, req: Request) -> str:
        import openai

        content = render(self.template, req.instruction, req.response_1, req.response_2)
        try:
            out = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": content}], max_tokens=self.max_tokens,
                temperature=self.temperature)
        except openai.AuthenticationError as exc:
            raise JudgeError(f"LLM judge at {self.base_url} refused the key (HTTP {exc.status_code}) "
                             f"(fix: export {self._key_env} with a valid key)") from None
        except openai.NotFoundError:
            raise JudgeError(f"LLM judge at {self.base_url}: no model '{self.model}' (HTTP 404) (fix: set "
                             "llm_judge.model to a model the endpoint serves, see GET <base_url>/models)") from None
        except openai.APIStatusError as exc:
            raise JudgeError(self._scrub(f"LLM judge at {self.base_url} answered HTTP {exc.status_code} after "
                                         f"retries: {str(exc.message)[:300]} (fix: check the server's log)")) from None
        except openai.APIConnectionError as exc:
            raise JudgeError(self._scrub(f"LLM judge at {self.base_url} is unreachable ({type(exc).__name__}: "
                                         f"{exc}) (fix: start the server, e.g. `vllm serve <model>`, or correct "
                                         "llm_judge.base_url)")) from None
        except (ValueError, KeyError, TypeError) as exc:  # a body that is not a chat completion
            raise JudgeError(self._scrub(f"LLM judge at {self.base_url} sent a reply that is not a chat completion "
                                         f"({exc}) (fix: point llm_judge.base_url at the /v1 root of an "
                                         "OpenAI-compatible server)")) from None
        self.calls += 1
        choices = getattr(out, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise JudgeError(f"LLM judge at {self.base_url} sent a chat completion without a message (fix: point "
                             "llm_judge.base_url at the /v1 root of an OpenAI-compatible server)")
        return choices[0].message.content or ""

    def judge(self, requests: Sequence[Request], progress=None) -> list[Judgment]:
        """A judgment per request, in order. Cached ones cost nothing; the rest go out ``concurrency`` at a time.
        Only parsed verdicts are cached, so a judge fixed after answering garbage is asked again."""
        keys = [cache_key(self.model, self.template, r.instruction, r.response_1, r.response_2) for r in requests]
        out: list[Judgment | None] = [None] * len(requests)
        todo = []
        for i, key in enumerate(keys):
            hit = self._cached(key)
            if hit is not None and hit.get("verdict") in (1, 2):
                out[i] = Judgment(hit["verdict"], hit.get("answer", ""), cached=True)
            else:
                todo.append(i)

        def one(i: int) -> tuple[int, str]:
            return i, self._ask(requests[i])

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            for i, answer in pool.map(one, todo):
                verdict = parse_verdict(answer)
                if verdict is not None:
                    self._store(keys[i], {"verdict": verdict, "answer": answer[:200], "model": self.model})
                out[i] = Judgment(verdict, answer, cached=False)
                if progress is not None:
                    progress.update(1)
        return out  # type: ignore[return-value]


def api_key_from_env(name: str | None) -> str:
    """The key from the variable the params name; a local server without auth accepts any value."""
    if not name:
        return "EMPTY"
    return os.environ.get(name) or "EMPTY"
