"""Adapters: each hub shape into {prompt, chosen, rejected}, and every error case with a helpful message."""

from __future__ import annotations

import pytest

from alignloop.core.adapters import (
    ADAPTERS,
    AdapterError,
    auto,
    detect,
    get_adapter,
    hh,
    messages,
    pairs,
    parse_hh,
    prompt_chars,
    prompt_text,
)

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


# --- pairs ----------------------------------------------------------------------------------------


def test_pairs_strings_are_stripped():
    row = {"id": 7, "prompt": "Say hi", "chosen": "  Hello!\n", "rejected": "\tGo away "}
    assert pairs(row) == {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away"}


def test_pairs_message_prompt_keeps_only_role_and_content():
    row = {"prompt": [{"role": "user", "content": "Hi", "name": "bob"}], "chosen": "Hello", "rejected": "No"}
    assert pairs(row) == {"prompt": [U("Hi")], "chosen": "Hello", "rejected": "No"}


def test_pairs_trl_conversational_takes_final_assistant_message():
    row = {
        "prompt": [S("Be kind."), U("What is 2+2?")],
        "chosen": [A(" 4 ")],
        "rejected": [A("5")],
    }
    assert pairs(row) == {"prompt": [S("Be kind."), U("What is 2+2?")], "chosen": "4", "rejected": "5"}


def test_pairs_full_conversations_in_chosen_take_the_last_reply():
    # UltraFeedback-binarized style: prompt string, chosen/rejected the whole conversation.
    row = {"prompt": "Q?", "chosen": [U("Q?"), A("good")], "rejected": [U("Q?"), A("bad")]}
    assert pairs(row) == {"prompt": "Q?", "chosen": "good", "rejected": "bad"}


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
        ({"prompt": "p", "rejected": "b"}, "missing field 'chosen'"),
        ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string or a list"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "field 'prompt' is an empty string"),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, "field 'prompt' must be a non-empty list"),
        ({"prompt": "p", "chosen": 5, "rejected": "b"}, "field 'chosen' must be a string or a list of messages, got int"),
        ({"prompt": "p", "chosen": "a", "rejected": "   "}, "field 'rejected' is empty"),
        ({"prompt": "p", "chosen": " same", "rejected": "same "}, "'chosen' equals 'rejected'"),
        ({"prompt": "p", "chosen": [U("a")], "rejected": [A("b")]}, "field 'chosen' must end with an assistant message"),
        ({"prompt": "p", "chosen": [{"content": "a"}], "rejected": [A("b")]}, "chosen[0] has no string 'role'"),
        ({"prompt": "p", "chosen": [{"role": "assistant", "content": ["x"]}], "rejected": [A("b")]}, "chosen[0] 'content' must be a string"),
        ({"prompt": [U("p"), "oops"], "chosen": "a", "rejected": "b"}, "prompt[1] must be a {role, content} object"),
        ({"prompt": "p", "chosen": [A("")], "rejected": [A("b")]}, "field 'chosen[-1].content' is empty"),
    ],
)
def test_pairs_errors(row, expected):
    with pytest.raises(AdapterError) as exc:
        pairs(row)
    assert expected in str(exc.value)
    assert "fix:" in str(exc.value)


def test_missing_field_lists_the_row_keys():
    with pytest.raises(AdapterError, match=r"row has: chosen, question, rejected"):
        pairs({"question": "q", "chosen": "a", "rejected": "b"})


# --- messages -------------------------------------------------------------------------------------


def test_messages_multi_turn_implicit_prompt():
    turns = [S("sys"), U("hi"), A("hello"), U("tell a joke")]
    row = {"chosen": turns + [A(" a funny joke ")], "rejected": turns + [A("no")]}
    assert messages(row) == {"prompt": turns, "chosen": "a funny joke", "rejected": "no"}


def test_messages_single_user_turn_prompt_is_a_list():
    row = {"chosen": [U("q"), A("yes")], "rejected": [U("q"), A("no")], "prompt": "ignored"}
    assert messages(row) == {"prompt": [U("q")], "chosen": "yes", "rejected": "no"}


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"chosen": [U("q"), A("a")], "rejected": [U("other"), A("b")]}, "differ at message 0"),
        ({"chosen": [U("q"), A("x"), U("q2"), A("a")], "rejected": [U("q"), A("y"), U("q2"), A("b")]}, "differ at message 1"),
        ({"chosen": [U("q"), A("a")], "rejected": [U("q"), U("more"), A("b")]}, "differ at message 1"),
        ({"chosen": [A("a")], "rejected": [A("b")]}, "no turns before its final assistant message"),
        ({"chosen": [U("q"), A("a")], "rejected": [U("q")]}, "field 'rejected' must end with an assistant message"),
        ({"chosen": "a", "rejected": [U("q"), A("b")]}, "must be a list of {role, content} messages for adapter 'messages'"),
        ({"chosen": [U("q"), A("a")]}, "missing field 'rejected'"),
        ({"chosen": [U("q"), A("same")], "rejected": [U("q"), A("same")]}, "'chosen' equals 'rejected'"),
    ],
)
def test_messages_errors(row, expected):
    with pytest.raises(AdapterError) as exc:
        messages(row)
    assert expected in str(exc.value)


# --- hh -------------------------------------------------------------------------------------------

HH_PREFIX = "\n\nHuman: What is a good pet?\n\nAssistant: A cat or a dog.\n\nHuman: Which is easier?"


def test_parse_hh_turns():
    assert parse_hh(HH_PREFIX + "\n\nAssistant: A cat.") == [
        U("What is a good pet?"),
        A("A cat or a dog."),
        U("Which is easier?"),
        A("A cat."),
    ]
    # Multi-line content stays inside its turn; a leading "Human:" without blank lines is accepted.
    assert parse_hh("Human: line one\nline two\n\nAssistant: ok") == [U("line one\nline two"), A("ok")]


def test_hh_multi_turn():
    row = {"chosen": HH_PREFIX + "\n\nAssistant:  A cat, it needs less walking. ", "rejected": HH_PREFIX + "\n\nAssistant: Dunno."}
    assert hh(row) == {
        "prompt": [U("What is a good pet?"), A("A cat or a dog."), U("Which is easier?")],
        "chosen": "A cat, it needs less walking.",
        "rejected": "Dunno.",
    }


def test_hh_single_turn_prompt_is_messages():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: What."}
    assert hh(row) == {"prompt": [U("Hi")], "chosen": "Hello!", "rejected": "What."}


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"chosen": HH_PREFIX, "rejected": HH_PREFIX + "\n\nAssistant: x"}, "field 'chosen' does not end with an 'Assistant:' turn"),
        ({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}, "differ before the final Assistant turn (at turn 0)"),
        ({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: A\n\nAssistant:   "}, "field 'rejected (final Assistant turn)' is empty"),
        ({"chosen": "just text", "rejected": "\n\nHuman: A\n\nAssistant: y"}, "has no '\\n\\nHuman:'"),
        ({"chosen": "preamble\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: A\n\nAssistant: y"}, "text before its first 'Human:' turn"),
        ({"chosen": "\n\nAssistant: x", "rejected": "\n\nAssistant: y"}, "only an Assistant turn and no prompt"),
        ({"chosen": ["x"], "rejected": "\n\nHuman: A\n\nAssistant: y"}, "must be an HH dialogue string, got list"),
        ({"chosen": "\n\nHuman: A\n\nAssistant: x"}, "missing field 'rejected'"),
        ({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: A\n\nAssistant: x "}, "'chosen' equals 'rejected'"),
    ],
)
def test_hh_errors(row, expected):
    with pytest.raises(AdapterError) as exc:
        hh(row)
    assert expected in str(exc.value)


# --- auto, registry, prompt keys ------------------------------------------------------------------


def test_auto_detects_each_shape():
    p = {"prompt": "q", "chosen": "a", "rejected": "b"}
    m = {"chosen": [U("q"), A("a")], "rejected": [U("q"), A("b")]}
    h = {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}
    assert (detect(p), detect(m), detect(h)) == ("pairs", "messages", "hh")
    assert auto(p) == pairs(p)
    assert auto(m) == messages(m)
    assert auto(h) == hh(h)
    # datasets fills missing columns with None: a null prompt is not a 'prompt' key.
    assert detect({**m, "prompt": None}) == "messages"


@pytest.mark.parametrize(
    "row",
    [{"text": "hello"}, {"chosen": "a", "rejected": "b"}, {"chosen": [A("a")], "rejected": "b"}, {}],
)
def test_auto_rejects_unknown_shapes(row):
    with pytest.raises(AdapterError, match="cannot detect the row's shape.*fix: set data.adapter"):
        auto(row)


def test_registry_and_get_adapter():
    assert set(ADAPTERS) >= {"pairs", "messages", "hh", "auto"}
    assert get_adapter("hh") is hh
    with pytest.raises(AdapterError, match="unknown adapter 'nope'"):
        get_adapter("nope")


def test_prompt_text_is_stable():
    assert prompt_text("tell me about ocean") == "tell me about ocean"
    a = [{"role": "user", "content": "hi"}]
    b = [{"content": "hi", "role": "user"}]
    assert prompt_text(a) == prompt_text(b) == '[{"content":"hi","role":"user"}]'
    assert prompt_text([U("hi")]) != prompt_text("hi")
    assert prompt_text([U("é")]) == '[{"content":"é","role":"user"}]'


def test_prompt_chars():
    assert prompt_chars("abc") == 3
    assert prompt_chars([S("ab"), U("cde")]) == 5
