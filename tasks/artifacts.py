"""Per-round and per-pipeline result artifacts for the Prefect UI (Artifacts tab and the flow run page)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from alignloop.pipeline import layout

ROWS = [  # (eval.json key, label, format)
    ("gold_reward", "gold reward (hidden)", "{:.3f}"),
    ("proxy_reward", "proxy reward (RM)", "{:.3f}"),
    ("win_rate_vs_sft_gold", "win-rate vs SFT (gold)", "{:.3f}"),
    ("win_rate_vs_sft_proxy", "win-rate vs SFT (RM)", "{:.3f}"),
    ("win_rate_vs_champion_gold", "win-rate vs champion (gold)", "{:.3f}"),
    ("win_rate_vs_champion_proxy", "win-rate vs champion (RM)", "{:.3f}"),
    ("kl_to_sft", "KL to SFT", "{:.3f}"),
    ("length_tokens", "response length (tokens)", "{:.1f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("self_bleu", "self-BLEU (lower: more diverse)", "{:.3f}"),
    ("ranking_accuracy", "ranking accuracy, held-out prefs", "{:.3f}"),
    ("proxy_gold_gap", "proxy gain − gold gain", "{:.3f}"),
]


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def round_markdown(name: str, ev: dict, sft: dict | None, train: dict | None, pairs: dict | None,
                   stages: list[dict], registry: dict | None = None) -> str:
    """Markdown summary of one round: evaluation against SFT, training and pair stats, the promotion decision,
    and what ran."""
    lines = [f"## Round `{name}`", "", "| metric | SFT | " + name + " |", "|---|---|---|"]
    for key, label, fmt in ROWS:
        if key in ev:
            base = fmt.format(sft[key]) if sft and key in sft else ""
            ci = ev.get(key + "_ci")
            interval = f" [{fmt.format(ci['low'])}, {fmt.format(ci['high'])}]" if ci else ""
            lines.append(f"| {label} | {base} | {fmt.format(ev[key])}{interval} |")
    if pairs:
        lines += ["", f"Pairs: {pairs.get('pairs', 0)} from {pairs.get('prompts', 0)} prompts "
                  f"(yield {pairs.get('yield', 0):.2f}, mean margin {pairs.get('margin_mean', 0):.3f})."]
    if train and "loss_first" in train:
        lines.append(f"Training loss {train['loss_first']:.4f} → {train['loss_last']:.4f}.")
    if train and "score_first" in train:  # ppo, reinforce_pp
        rpp = any(str(s.get("stage", "")).startswith("reinforce_pp_") for s in stages)
        lines.append(f"{'REINFORCE++' if rpp else 'PPO'}: {train['iterations']} iterations, rollout reward {train['score_first']:.3f} → "
                     f"{train['score_last']:.3f}, KL to reference {train['kl_to_ref_last']:.2f}"
                     + (" (stopped at the KL limit)." if train.get("stopped_early") else "."))
    if train and "reward_first" in train:  # grpo, rloo
        lines.append(f"Online RL: {train['steps']} steps, {train['samples']} samples, batch reward "
                     f"{train['reward_first']:.3f} → {train['reward_last']:.3f}"
                     + (f", KL estimate {train['kl_estimate_last']:.3f}." if "kl_estimate_last" in train else "."))
    if train and "chosen_win_rate_mean" in train:  # sppo, dno, inpo
        lines.append(f"Self-play: {train['pairs']} pairs from {train['prompts']} prompts, preference-model win-rate "
                     f"{train['chosen_win_rate_mean']:.3f} (chosen) vs {train['rejected_win_rate_mean']:.3f} (rejected).")
    if registry:
        verdict = ("**promoted to champion**" if registry["promoted"]
                   else f"stays candidate (champion: {registry['champion_after']['round']})")
        lines += ["", f"Registry: `{registry['model_name']}` version {registry['version']}, {verdict}."]
        lines += [f"- {r}" for r in registry.get("reasons", [])]
    if stages:
        ran = [f"`{s['stage']}` ({s['seconds']:.0f} s)" for s in stages if s["ran"]]
        skipped = [f"`{s['stage']}`" for s in stages if not s["ran"]]
        lines += ["", "Ran: " + (", ".join(ran) or "nothing (all stages up to date)") + "."]
        if skipped:
            lines.append("Skipped by DVC (up to date): " + ", ".join(skipped) + ".")
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def table_columns(keys: list[str], gate: list[str]) -> list[str]:
    """Reading order for the rounds table: the policy, then the metrics the promotion gate reads (in the gate's
    order), then the evaluation rows of ROWS in their order, then anything else alphabetically; the step is the
    row number and is left out."""
    order = ["policy", *gate, *(k for k, _, _ in ROWS)]
    first = list(dict.fromkeys(k for k in order if k in keys))
    return first + sorted(k for k in keys if k not in first and k != "step")


def _round_md(root: Path, r: str, stages: list[dict]) -> str:
    return round_markdown(r, _load(root / layout.eval_paths(r)[0]) or {}, _load(root / layout.eval_paths("sft")[0]),
                          _load(root / layout.train_metrics(r)), _load(root / layout.pairs_metrics(r)), stages,
                          _load(root / layout.registry_record(r)))


@task(name="publish-round", task_run_name="publish-{round_name}", cache_policy=NO_CACHE, retries=1)
def publish_round(round_name: str, project_dir: str, experiment: str, stages: list[dict]) -> str:
    md = _round_md(Path(project_dir), round_name, stages)
    create_markdown_artifact(key=artifact_key(experiment, round_name), markdown=md,
                             description=f"{experiment}: evaluation of round {round_name}")
    return md


@task(name="publish-pipeline", cache_policy=NO_CACHE, retries=1)
def publish_pipeline(project_dir: str, experiment: str, gate: list[str], rounds: dict[str, list[dict]]) -> list[dict]:
    """The rounds table (columns in reading order) and every round's summary, on the pipeline run itself (the round
    artifacts are on the round subflows' pages)."""
    root = Path(project_dir)
    rows = _load(root / layout.REPORT_ROUNDS) or []
    columns = table_columns(list(rows[0]) if rows else [], gate)
    table = [{k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)) for k in columns} for r in rows]
    create_table_artifact(key=artifact_key(experiment, "rounds"), table=table,
                          description=f"{experiment}: evaluation of every policy, SFT first")
    md = "\n".join(_round_md(root, r, stages) for r, stages in rounds.items())
    create_markdown_artifact(key=artifact_key(experiment, "rounds", "summary"), markdown=md,
                             description=f"{experiment}: every round of this pipeline run")
    return table
