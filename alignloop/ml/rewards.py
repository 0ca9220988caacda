"""A round's reward as one scorer: reward models (the ensemble, or one member) and Python reward functions, combined.

One definition (``reward`` in params.yaml, alignloop.core.config.RewardConfig) serves the score stage (rejection
sampling), PPO and the online algorithms. :meth:`RoundReward.sources` gives each source's raw values (what a score
shard stores), :meth:`RoundReward.combine` the reward from them (weighted sum, or maxmin over the rows given), and
calling the object does both, as a TRL reward function would (``f(prompts, completions, **kwargs)``).

Knows no data/ paths: the reward-model directories come in as arguments (alignloop.pipeline.lineage.round_reward).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignloop.core.config import ConfigError
from alignloop.core.rewards import call_reward_function, combine, completion_text, load_reward_function


class RoundReward:
    """The round's reward. ``rm_dirs``: every ensemble member's directory, member k at index k; only the members a
    source uses are read. Every reward function is imported at construction (a bad name fails before any work);
    ``keep_loaded`` holds the reward models between calls (PPO iterations, online steps). ``root``: the project
    directory reward functions must live in (default: the working directory)."""

    __name__ = "round_reward"  # TRL names a reward function's logged columns after it

    def __init__(self, reward_cfg, score_cfg, model_cfg, rm_dirs: Sequence[str], *, keep_loaded: bool = False,
                 root: str | Path | None = None):
        self.cfg = reward_cfg
        self.root = Path.cwd() if root is None else Path(root)
        sources = list(reward_cfg.sources)
        self.labels: list[str] = [s.label for s in sources]
        self.weights: list[float] = [s.weight for s in sources]
        self.aggregate: str = reward_cfg.aggregate
        self.is_default: bool = reward_cfg.is_default
        self.function_modules: list[str] = reward_cfg.function_modules
        self._functions = {s.label: load_reward_function(s.function, self.root) for s in sources if s.function}
        for s in sources:
            k = s.reward_model
            if isinstance(k, int) and not 0 <= k < len(rm_dirs):
                raise ConfigError(
                    f"reward source '{s.label}' is reward_model {k}, but the ensemble has {len(rm_dirs)} member(s), "
                    f"0 to {len(rm_dirs) - 1} (fix: reward_model: 0..{len(rm_dirs) - 1} or 'ensemble', or raise "
                    "reward_model.ensemble)")
        self._members = reward_cfg.members(len(rm_dirs))  # the members scored, each once
        self._uses_ensemble = any(s.reward_model == "ensemble" for s in sources)
        self.model_dirs: list[str] = [rm_dirs[k] for k in self._members]
        self._ensemble = None
        if self._members:
            from alignloop.ml.inference import RewardEnsemble

            # With the ensemble source every member is here, in order: its aggregate is the ensemble's reward.
            self._ensemble = RewardEnsemble(self.model_dirs, model_cfg, batch_size=score_cfg.batch_size,
                                            aggregate=score_cfg.aggregate, std_penalty=score_cfg.std_penalty,
                                            keep_loaded=keep_loaded)
        self.member_rewards: list[list[float]] = []

    @classmethod
    def from_params(cls, params, round_name: str, rm_dirs: Sequence[str], *, keep_loaded: bool = False,
                    root: str | Path | None = None) -> RoundReward:
        """The reward of ``round_name`` (its merged ``reward`` and ``score`` sections) over the members ``rm_dirs``."""
        return cls(params.round_section(round_name, "reward"), params.round_section(round_name, "score"),
                   params.model, rm_dirs, keep_loaded=keep_loaded, root=root)

    def sources(self, prompts: Sequence, completions: Sequence, meta: Sequence[dict] | None = None, *,
                progress: bool = True, group: int = 0, desc: str = "reward") -> dict[str, list[float]]:
        """Each source's raw values, ``{label: [value per row]}`` in the sources' order. Reward models score the
        completions' text (``group``: as in inference.reward_scores); functions get the prompts and completions as
        given and ``meta`` (one dict per row; default empty dicts). Afterwards ``member_rewards`` holds each
        ensemble member's scores when the ensemble source has more than one member, else ``[]``."""
        n = len(completions)
        if len(prompts) != n or (meta is not None and len(meta) != n):
            raise ValueError(f"{len(prompts)} prompts, {n} completions and {'no' if meta is None else len(meta)} meta "
                             "rows: one of each per row")
        self.member_rewards = []
        if n == 0:
            return {label: [] for label in self.labels}
        rewards, members = [], []
        if self._ensemble is not None:
            rewards, members = self._ensemble(list(prompts), [completion_text(c) for c in completions], desc=desc,
                                              progress=progress, group=group)
            if self._uses_ensemble and len(members) > 1:
                self.member_rewards = members
        meta = [{} for _ in range(n)] if meta is None else list(meta)
        out = {}
        for s in self.cfg.sources:
            if s.reward_model == "ensemble":
                out[s.label] = rewards
            elif s.reward_model is not None:
                out[s.label] = members[self._members.index(s.reward_model)]
            else:
                out[s.label] = call_reward_function(self._functions[s.label], s.function, prompts, completions, meta)
        return out

    def combine(self, source_columns: dict[str, Sequence[float]]) -> list[float]:
        """The reward of each row from the sources' values (as :meth:`sources` returns them), by ``aggregate``;
        maxmin normalises over the rows given, so give it the whole batch."""
        missing = [label for label in self.labels if label not in source_columns]
        if missing:
            raise ValueError(f"no values for reward source(s) {missing}")
        return combine([source_columns[label] for label in self.labels], self.weights, self.aggregate)

    def __call__(self, prompts: Sequence, completions: Sequence, meta: Sequence[dict] | None = None, *,
                 progress: bool = False, **kwargs) -> list[float]:
        """The combined reward of each (prompt, completion). Further keyword arguments (TRL passes the dataset's
        other columns) are ignored."""
        return self.combine(self.sources(prompts, completions, meta, progress=progress))
