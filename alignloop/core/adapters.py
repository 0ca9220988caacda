"""Adapters: turn one row of a preference dataset, in one of the usual hub shapes, into a normalized pair.

Every adapter takes one source row (a dict) and returns ``{"prompt", "chosen", "rejected"}`` where
``prompt`` is a non-empty string or a non-empty list of ``{"role", "content"}`` messages and ``chosen`` /
``rejected`` are non-empty, stripped, different strings. A row that does not fit raises :class:`AdapterError`
whose message says what is wrong and how to fix it; curation prefixes it with ``file:line``.

Shapes:

* ``pairs``    ``{prompt, chosen, rejected}``; prompt a string or a message list; chosen/rejected strings, or
               message lists (TRL's conversational preference shape) whose final assistant message is the reply.
* ``messages`` ``{chosen: [messages], rejected: [messages]}`` with an implicit prompt: every message before
               the final assistant turn (identical in both).
* ``hh``       Anthropic HH-RLHF full dialogues ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` in chosen and rejected.
* ``auto``     picks one of the above from the row's keys and value types.

Pure: no IO, no third-party imports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

Messages = list[dict[str, str]]
Prompt = str | Messages


class AdapterError(ValueError):
    """A source row that does not fit the adapter; the message says what is wrong and the fix."""


# --- helpers ------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require(row: dict, key: str, adapter: str) -> Any:
    """The value of ``row[key]``; a missing key or a null value (as datasets fills in) is an error."""
    if not isinstance(row, dict):
        raise AdapterError(f"expected a JSON object, got {_type_name(row)} (fix: one object per row)")
    if row.get(key) is None:
        keys = ", ".join(sorted(k for k, v in row.items() if v is not None)) or "none"
        raise AdapterError(
            f"missing field '{key}' for adapter '{adapter}' (row has: {keys}) "
            f"(fix: add '{key}', or set data.adapter to the shape of this dataset)"
        )
    return row[key]


def normalize_messages(value: Any, field: str) -> Messages:
    """Validate a chat message list and keep only ``role`` and ``content`` of each message."""
    if not isinstance(value, list) or not value:
        raise AdapterError(
            f"field '{field}' must be a non-empty list of {{role, content}} messages, got {_type_name(value)} "
            f"(fix: correct the value)"
        )
    out: Messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise AdapterError(f"{field}[{i}] must be a {{role, content}} object, got {_type_name(msg)} (fix: correct the message)")
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not role.strip():
            raise AdapterError(f"{field}[{i}] has no string 'role' (fix: give every message a role: system/user/assistant)")
        if not isinstance(content, str):
            raise AdapterError(
                f"{field}[{i}] 'content' must be a string, got {_type_name(content)} "
                f"(fix: flatten multi-part content to text)"
            )
        out.append({"role": role.strip(), "content": content})
    return out


def _response_text(text: Any, field: str) -> str:
    """A response string, stripped; empty or non-string is an error."""
    if not isinstance(text, str):
        raise AdapterError(
            f"field '{field}' must be a string or a list of messages, got {_type_name(text)} (fix: correct the value)"
        )
    text = text.strip()
    if not text:
        raise AdapterError(f"field '{field}' is empty (fix: give it the response text or drop the row)")
    return text


def _final_assistant(messages: Messages, field: str) -> tuple[Messages, str]:
    """Split a conversation into (the turns before the final assistant message, that message's text)."""
    if messages[-1]["role"] != "assistant":
        raise AdapterError(
            f"field '{field}' must end with an assistant message, but the last role is '{messages[-1]['role']}' "
            f"(fix: the final message must be the response being rated)"
        )
    return messages[:-1], _response_text(messages[-1]["content"], f"{field}[-1].content")


def _prompt(value: Any, field: str = "prompt") -> Prompt:
    """A prompt: a non-blank string (kept as is) or a non-empty message list."""
    if isinstance(value, str):
        if not value.strip():
            raise AdapterError(f"field '{field}' is an empty string (fix: give it text or drop the row)")
        return value
    if isinstance(value, list):
        return normalize_messages(value, field)
    raise AdapterError(
        f"field '{field}' must be a string or a list of {{role, content}} messages, got {_type_name(value)} "
        f"(fix: correct the value)"
    )


def _finish(prompt: Prompt, chosen: str, rejected: str) -> dict:
    if chosen == rejected:
        raise AdapterError("'chosen' equals 'rejected': the pair carries no preference (fix: drop the row)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _differs_at(a: Messages, b: Messages) -> int:
    """Index of the first message where two conversations differ (or the shorter length)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


# --- adapters -----------------------------------------------------------------------------------


def pairs(row: dict) -> dict:
    """``{prompt, chosen, rejected}``: prompt string or messages; chosen/rejected strings or message lists.

    For message lists (TRL's conversational preference shape) the reply is the final message, which must
    be an assistant message; any earlier turns in it are ignored because the prompt is given explicitly.
    """
    prompt = _prompt(_require(row, "prompt", "pairs"))
    responses = []
    for field in ("chosen", "rejected"):
        value = _require(row, field, "pairs")
        if isinstance(value, list):
            _, text = _final_assistant(normalize_messages(value, field), field)
        else:
            text = _response_text(value, field)
        responses.append(text)
    return _finish(prompt, *responses)


def messages(row: dict) -> dict:
    """``{chosen: [messages], rejected: [messages]}``: the prompt is every turn before the final assistant one.

    The prompt turns must be identical in chosen and rejected. A ``prompt`` key, if present, is ignored.
    """
    convs = {}
    for field in ("chosen", "rejected"):
        value = _require(row, field, "messages")
        if not isinstance(value, list):
            raise AdapterError(
                f"field '{field}' must be a list of {{role, content}} messages for adapter 'messages', "
                f"got {_type_name(value)} (fix: use adapter 'pairs' for string responses, 'hh' for HH dialogues)"
            )
        convs[field] = _final_assistant(normalize_messages(value, field), field)
    (p_chosen, chosen), (p_rejected, rejected) = convs["chosen"], convs["rejected"]
    if not p_chosen:
        raise AdapterError(
            "'chosen' has no turns before its final assistant message, so there is no prompt "
            "(fix: include the user turn(s) in the conversation, or use adapter 'pairs' with a 'prompt' field)"
        )
    if p_chosen != p_rejected:
        i = _differs_at(p_chosen, p_rejected)
        raise AdapterError(
            f"the prompt turns of 'chosen' and 'rejected' differ at message {i} "
            f"(fix: both conversations must share every turn before the final assistant reply)"
        )
    return _finish(p_chosen, chosen, rejected)


_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh(text: Any, field: str = "text") -> Messages:
    """Parse an HH-RLHF dialogue (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) into user/assistant messages."""
    if not isinstance(text, str):
        raise AdapterError(f"field '{field}' must be an HH dialogue string, got {_type_name(text)} (fix: correct the value)")
    marks = list(_HH_TURN.finditer(text))
    if not marks:
        raise AdapterError(
            f"field '{field}' has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns "
            f"(fix: use adapter 'pairs' or 'messages' for this dataset)"
        )
    lead = text[: marks[0].start()].strip()
    if lead:
        raise AdapterError(
            f"field '{field}' has text before its first 'Human:' turn: {lead[:40]!r} (fix: clean the dialogue)"
        )
    out: Messages = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.append({"role": _HH_ROLE[m.group(1)], "content": text[m.end() : end].strip()})
    return out


def hh(row: dict) -> dict:
    """Anthropic HH-RLHF: chosen/rejected are full dialogues; prompt = the turns before the final Assistant turn."""
    convs = {}
    for field in ("chosen", "rejected"):
        turns = parse_hh(_require(row, field, "hh"), field)
        if turns[-1]["role"] != "assistant":
            raise AdapterError(
                f"field '{field}' does not end with an 'Assistant:' turn (fix: the dialogue must end with the rated reply)"
            )
        convs[field] = (turns[:-1], _response_text(turns[-1]["content"], f"{field} (final Assistant turn)"))
    (p_chosen, chosen), (p_rejected, rejected) = convs["chosen"], convs["rejected"]
    if not p_chosen:
        raise AdapterError("'chosen' has only an Assistant turn and no prompt (fix: the dialogue must start with 'Human:')")
    if p_chosen != p_rejected:
        i = _differs_at(p_chosen, p_rejected)
        raise AdapterError(
            f"the dialogues of 'chosen' and 'rejected' differ before the final Assistant turn (at turn {i}) "
            f"(fix: both must share every turn except the last reply)"
        )
    return _finish(p_chosen, chosen, rejected)


def _is_hh(value: Any) -> bool:
    return isinstance(value, str) and ("\n\nHuman:" in value or value.lstrip().startswith("Human:"))


def detect(row: dict) -> str:
    """The adapter name that fits a row: 'pairs', 'messages' or 'hh'; AdapterError if none does."""
    if not isinstance(row, dict):
        raise AdapterError(f"expected a JSON object, got {_type_name(row)} (fix: one object per row)")
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if row.get("prompt") is not None and chosen is not None and rejected is not None:
        return "pairs"
    if isinstance(chosen, list) and isinstance(rejected, list):
        return "messages"
    if _is_hh(chosen) and _is_hh(rejected):
        return "hh"
    keys = ", ".join(sorted(k for k, v in row.items() if v is not None)) or "none"
    raise AdapterError(
        f"cannot detect the row's shape (row has: {keys}); expected prompt+chosen+rejected, chosen/rejected "
        f"message lists, or HH dialogues (fix: set data.adapter explicitly, or correct the row)"
    )


def auto(row: dict) -> dict:
    """Detect the shape from the keys (see :func:`detect`) and apply that adapter."""
    return ADAPTERS[detect(row)](row)


ADAPTERS: dict[str, Callable[[dict], dict]] = {
    "pairs": pairs,
    "messages": messages,
    "hh": hh,
    "auto": auto,
    # The embedded task's raw preference rows are plain pairs.
    "alignloop": pairs,
}


def get_adapter(name: str) -> Callable[[dict], dict]:
    """The adapter called ``name``; AdapterError naming the choices if there is none."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise AdapterError(f"unknown adapter '{name}' (fix: data.adapter is one of {sorted(ADAPTERS)})") from None


def prompt_text(prompt: Prompt) -> str:
    """A stable string key for a prompt: a string as is, a message list as compact sorted-key JSON."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def prompt_chars(prompt: Prompt) -> int:
    """Length of a prompt in characters: the string, or the sum of the message contents."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m.get("content", "")) for m in prompt)
