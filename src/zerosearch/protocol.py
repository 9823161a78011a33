"""The wire protocol between a policy, its environment and a simulated search engine.

Released ZeroSearch / Search-R1 checkpoints were trained on exact strings, so the strings here are
protocol constants: change them only through the override arguments, never in place. This module
also parses what a policy generated (the first complete ``<search>`` or ``<answer>`` in the *new*
text only, never in the prompt, which itself contains an ``<answer> Beijing </answer>`` example) and
what a simulation LLM generated (``Doc i:`` lines, however the model numbered them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

# --- policy side -------------------------------------------------------------------------------

#: The Search-R1 instruction the released ZeroSearch policies were trained on (byte-exact).
POLICY_INSTRUCTION = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every "
    "time you get new information. After reasoning, if you find you lack some knowledge, you can call "
    "a search engine by <search> query </search> and it will return the top searched results between "
    "<information> and </information>. You can search as many times as your want. If you find no "
    "further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
)

#: Appended after the instruction; ``{question}`` is replaced by the question text.
QUESTION_SUFFIX = "Question: {question}\n"

#: Inserted (loss-masked) when a turn holds neither a complete search nor a complete answer.
INVALID_ACTION_MESSAGE = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> "
    "and </search>. If I want to give the final answer, I should put the answer between <answer> and "
    "</answer>. Let me try again.\n"
)

#: Generation stops at the first of these (the environment then acts).
STOP_STRINGS = ("</search>", "</answer>")

_ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def normalize_question(question: str) -> str:
    """The question as the released policies saw it: stripped, with ``?`` appended when missing.

    Upstream data preparation (Search-R1's ``nq_search.py``) and inference (ZeroSearch's
    ``inference.py``) both do this, so an NQ question (none ends in ``?``) must get one here too.
    """
    question = question.strip()
    if not question:
        raise ValueError("question is empty")
    return question if question.endswith("?") else question + "?"


def build_policy_prompt(question: str, instruction: str | None = None) -> str:
    """The policy's first user turn: the instruction followed by ``Question: {question}\\n``.

    The question goes through :func:`normalize_question`. ``instruction`` overrides
    :data:`POLICY_INSTRUCTION` (for checkpoints trained on another text). Base models get this
    string as is (tokenised without special tokens, as upstream does); instruct models get it as the
    user turn of the chat template.
    """
    question = normalize_question(question)
    prefix = POLICY_INSTRUCTION if instruction is None else instruction
    return prefix + QUESTION_SUFFIX.format(question=question)


@dataclass(frozen=True)
class Action:
    """What one policy turn asked for."""

    kind: Literal["search", "answer", "invalid"]
    content: str = ""
    #: Index in the generated text just past the closing tag (where the turn should be cut).
    end: int = 0


def parse_action(generated: str) -> Action:
    """Return the first complete ``<search>…</search>`` or ``<answer>…</answer>`` in ``generated``.

    ``generated`` must be the text the policy produced this turn, never the prompt. Anything else
    (no tag, an unclosed tag, an empty search) is an ``invalid`` action.
    """
    match = _ACTION_RE.search(generated)
    if match is None:
        return Action("invalid", "", len(generated))
    kind, content = match.group(1), match.group(2).strip()
    if kind == "search" and not content:
        return Action("invalid", "", match.end())
    return Action(kind, content, match.end())  # type: ignore[arg-type]


def search_queries(response: str) -> list[str]:
    """Every query a response sent, in order (the text of each ``<search>`` action, stripped)."""
    return [m.group(2).strip() for m in _ACTION_RE.finditer(response) if m.group(1) == "search"]


def extract_answer(response: str) -> str | None:
    """The content of the last complete ``<answer>`` in a policy *response* (no prompt), or None.

    Returning None (not a default like "Beijing") lets metrics count extraction failures.
    """
    matches = _ANSWER_RE.findall(response)
    if not matches:
        return None
    return matches[-1].strip()


# --- documents ---------------------------------------------------------------------------------

NO_DOCUMENTS = "No documents matched the query."
"""The information block's body when the engine returned no document (a query BM25 matches nowhere)."""


def format_documents(texts: Sequence[str]) -> str:
    """``Doc 1: …`` lines, one per document, in order, each on one line (whitespace collapsed):
    simulator targets, judge and RAG prompts, tool results."""
    return "\n".join(f"Doc {i}: {' '.join(t.split())}" for i, t in enumerate(texts, start=1))


#: How retrieved documents are written for the policy: ``zerosearch`` = ``Doc 1: text`` (ZeroSearch's
#: simulator and Wikipedia-retriever clients), ``search-r1`` = ``Doc 1(Title: "T") text`` (Search-R1's
#: client, from the corpus row's ``contents``), ``auto`` = chosen from the policy's name.
DOC_FORMATS = ("auto", "zerosearch", "search-r1")


def resolve_doc_format(doc_format: str, model_name: str | None = None) -> str:
    """``zerosearch`` or ``search-r1``: the setting itself, or for ``auto`` the checkpoint family.

    A policy whose name says Search-R1 (``SearchR1``, ``search-r1``, ``search_r1``) was trained on
    Search-R1's document lines; every other policy (the released ZeroSearch ones included, and ours)
    on ZeroSearch's.
    """
    if doc_format not in DOC_FORMATS:
        raise ValueError(f"unknown doc_format {doc_format!r}; choose one of {', '.join(DOC_FORMATS)}")
    if doc_format != "auto":
        return doc_format
    name = re.sub(r"[-_ ]", "", (model_name or "").lower())
    return "search-r1" if "searchr1" in name else "zerosearch"


def search_r1_documents(contents: Sequence[str]) -> str:
    """Search-R1's document lines, byte-exact: ``Doc {i}(Title: {first line}) {other lines}\\n`` per
    corpus ``contents``, the title line as stored (quotes kept), whitespace kept; the whole string
    stripped, as Search-R1 strips it inside the information block."""
    lines = []
    for i, text in enumerate(contents, start=1):
        title, _, rest = text.partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {rest}\n")
    return "".join(lines).strip()


def zerosearch_documents(texts: Sequence[str]) -> str:
    """ZeroSearch's document lines, byte-exact: ``Doc {i}: {text}`` joined by newlines, stripped."""
    return "\n".join(f"Doc {i}: {t}" for i, t in enumerate(texts, start=1)).strip()


def information_block(body: str) -> str:
    """``\\n\\n<information>{body}</information>\\n\\n`` (both upstreams)."""
    return f"\n\n<information>{body}</information>\n\n"


def passage_text(contents: str) -> tuple[str | None, str]:
    """Split a FlashRAG corpus ``contents`` (``"Title"\\ntext``) into (title, text)."""
    first, sep, rest = contents.partition("\n")
    if not sep:
        return None, contents.strip()
    return first.strip().strip('"').strip() or None, rest.strip()


def document_line(title: str | None, text: str) -> str:
    """How a titled passage reads inside ``Doc i:`` in our own texts (simulator training targets,
    judge and baseline prompts). The policy's information block uses the upstream formats instead
    (:func:`search_r1_documents`, :func:`zerosearch_documents`)."""
    return f"(Title: {title}) {text}" if title else text


# Markers a simulation LLM may use to start a document: "Doc 1:", "Document 2.", "**Doc 3**:",
# "[4]", "5." or "5)" at the start of a line.
_DOC_MARKER_RE = re.compile(
    r"(?im)^[ \t>*#_-]*(?:doc(?:ument)?[ \t]*#?[ \t]*(\d{1,2})|\[(\d{1,2})\]|(\d{1,2})[.)])"
    r"[ \t*_]*(?:\([^)\n]*\))?[ \t*_]*[:.)\-–—]?[ \t*_]*"
)


def parse_documents(text: str, k: int) -> list[str]:
    """Split a simulation LLM's output into at most ``k`` documents.

    Documents start at numbered markers (whatever the numbering style, and in whatever order the
    model numbered them). Output with no marker at all is split on blank lines, then on lines.
    Empty documents are dropped; the caller compares ``len(result)`` with ``k`` and reports a
    shortfall instead of hiding it. Unlike the public code, a literal ``Doc 6`` inside a document
    does not truncate anything: only line-initial markers split.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    markers = list(_DOC_MARKER_RE.finditer(text))
    if markers:
        pieces = [text[m.end() : (markers[i + 1].start() if i + 1 < len(markers) else len(text))]
                  for i, m in enumerate(markers)]
    else:
        pieces = re.split(r"\n\s*\n", text)
        if len(pieces) < k:
            pieces = text.splitlines()
    docs = [" ".join(p.split()) for p in pieces]
    return [d for d in docs if d][:k]


# --- simulator side ----------------------------------------------------------------------------

Mode = Literal["useful", "noisy"]
MODES: tuple[Mode, ...] = ("useful", "noisy")

_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                 "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()

#: The fine-tuned simulator prompt the released ZeroSearch simulators were trained on (byte-exact
#: for k=5 and one gold answer). Sent as the chat user message with an empty system message.
FINETUNED_SIM_TEMPLATE = (
    "You are the Google search engine.\n"
    "Given a query, you need to generate {count} {mode} documents for the query.\n"
    "\n"
    'The user is trying to answer the question: "{question}" whose answer is {answer}.\n'
    "Each document should contain about 30 words, and these documents should contain {mode} "
    "information.\n"
    "\n"
    "Query: {query}\n"
    "{Mode} Output:\n"
)

#: The prompt-based simulator (an instruct model, no tuning): our own wording, with a one-shot demo
#: per mode so that a small model sees the ``Doc i:`` format it must produce.
PROMPT_SIM_SYSTEM = (
    "You are a web search engine. For every query you return a numbered list of short documents, "
    "one per line, each starting with 'Doc i:'. You write nothing else."
)

PROMPT_SIM_DEMOS: dict[str, tuple[str, str]] = {
    "useful": (
        "Query: capital of Australia\n"
        "Context: the user wants to answer \"What is the capital of Australia?\" (answer: Canberra).\n"
        "Write 3 useful documents that contain the information needed to answer the query.",
        "Doc 1: Canberra is the capital city of Australia. It was chosen in 1908 as a compromise "
        "between Sydney and Melbourne.\n"
        "Doc 2: Australia's federal parliament sits in Canberra, the nation's capital, located in the "
        "Australian Capital Territory.\n"
        "Doc 3: Although Sydney is the largest city, the capital of Australia is Canberra, a planned "
        "city designed by Walter Burley Griffin.",
    ),
    "noisy": (
        "Query: capital of Australia\n"
        "Context: the user wants to answer \"What is the capital of Australia?\" (answer: Canberra).\n"
        "Write 3 noisy documents: plausible search results about related topics that do NOT contain "
        "the answer.",
        "Doc 1: Sydney is Australia's most populous city, famous for its Opera House and harbour "
        "bridge.\n"
        "Doc 2: Australia is a country and continent surrounded by the Indian and Pacific oceans, "
        "with a population of about 26 million.\n"
        "Doc 3: Melbourne hosts the Australian Open tennis tournament every January and is known for "
        "its coffee culture.",
    ),
}

PROMPT_SIM_REQUEST = {
    "useful": "Write {k} useful documents that contain the information needed to answer the query.",
    "noisy": "Write {k} noisy documents: plausible search results about related topics that do NOT "
    "contain the answer.",
}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown simulation mode {mode!r}; expected one of {', '.join(MODES)}")


def format_gold(answers: Sequence[str]) -> str:
    """Gold answers for the prompt-based simulator: the first, plus up to two aliases joined by ' or '.

    An instruct model reads the aliases as help; the fine-tuned style uses :func:`first_gold`.
    """
    cleaned = [a.strip() for a in answers if a and a.strip()]
    return " or ".join(dict.fromkeys(cleaned[:3]))


def first_gold(answers: Sequence[str]) -> str:
    """The first non-empty gold answer (or ""): what the released fine-tuned simulators were trained
    and are driven with (upstream passes ``ground_truth[index][0]``), so the prompt stays in their
    training distribution."""
    return next((a.strip() for a in answers if a and a.strip()), "")


GOLD_STYLES = ("first", "joined")


def finetuned_sim_messages(query: str, question: str, answers: Sequence[str], mode: str,
                           k: int = 5, template: str | None = None,
                           gold: str = "first") -> list[dict[str, str]]:
    """Chat messages for a fine-tuned (simulation-tuned) simulator.

    ``gold``: ``first`` (the released simulators' input, the default) or ``joined``
    (:func:`format_gold`, for a simulator tuned on joined aliases).
    """
    _check_mode(mode)
    if gold not in GOLD_STYLES:
        raise ValueError(f"unknown gold style {gold!r}; choose one of {', '.join(GOLD_STYLES)}")
    count = _NUMBER_WORDS[k] if 0 <= k < len(_NUMBER_WORDS) else str(k)
    user = (template or FINETUNED_SIM_TEMPLATE).format(
        count=count, mode=mode, Mode=mode.capitalize(), question=question,
        answer=first_gold(answers) if gold == "first" else format_gold(answers), query=query)
    return [{"role": "system", "content": ""}, {"role": "user", "content": user}]


def prompt_sim_messages(query: str, question: str, answers: Sequence[str], mode: str,
                        k: int = 5) -> list[dict[str, str]]:
    """Chat messages for a prompt-based simulator: system rules, a one-shot demo, the request."""
    _check_mode(mode)
    demo_user, demo_reply = PROMPT_SIM_DEMOS[mode]
    context = ""
    if question:
        gold = format_gold(answers)
        context = f"Context: the user wants to answer \"{question}\"" + (
            f" (answer: {gold}).\n" if gold else ".\n")
    user = f"Query: {query}\n{context}{PROMPT_SIM_REQUEST[mode].format(k=k)}"
    return [
        {"role": "system", "content": PROMPT_SIM_SYSTEM},
        {"role": "user", "content": demo_user},
        {"role": "assistant", "content": demo_reply},
        {"role": "user", "content": user},
    ]
