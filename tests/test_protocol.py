"""Wire constants are byte-exact; parsing looks only at generated text; documents parse robustly."""

import pytest

from zerosearch import protocol as P


# Upstream strings written out in full (Search-R1 scripts/data_process/nq_search.py and
# search_r1/llm_agent/generation.py; ZeroSearch llm_agent/generation.py and inference.py).
_INSTRUCTION = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first "
    "every time you get new information. After reasoning, if you find you lack some knowledge, "
    "you can call a search engine by <search> query </search> and it will return the top "
    "searched results between <information> and </information>. You can search as many times "
    "as your want. If you find no further external knowledge needed, you can directly provide "
    "the answer inside <answer> and </answer>, without detailed illustrations. For example, "
    "<answer> Beijing </answer>. ")


def test_policy_prompt_is_byte_exact_with_a_question_mark():
    assert P.build_policy_prompt("who wrote hamlet?") == (
        "Answer the given question. You must conduct reasoning inside <think> and </think> first "
        "every time you get new information. After reasoning, if you find you lack some knowledge, "
        "you can call a search engine by <search> query </search> and it will return the top "
        "searched results between <information> and </information>. You can search as many times "
        "as your want. If you find no further external knowledge needed, you can directly provide "
        "the answer inside <answer> and </answer>, without detailed illustrations. For example, "
        "<answer> Beijing </answer>. Question: who wrote hamlet?\n")


def test_policy_prompt_appends_the_question_mark_like_upstream():
    # An NQ question (none ends in "?"): stripped, then "?" appended, as upstream prepares data.
    assert P.build_policy_prompt("  when was the eiffel tower built \n") == (
        "Answer the given question. You must conduct reasoning inside <think> and </think> first "
        "every time you get new information. After reasoning, if you find you lack some knowledge, "
        "you can call a search engine by <search> query </search> and it will return the top "
        "searched results between <information> and </information>. You can search as many times "
        "as your want. If you find no further external knowledge needed, you can directly provide "
        "the answer inside <answer> and </answer>, without detailed illustrations. For example, "
        "<answer> Beijing </answer>. Question: when was the eiffel tower built?\n")
    assert P.POLICY_INSTRUCTION == _INSTRUCTION
    assert P.build_policy_prompt(" q ", instruction="X. ") == "X. Question: q?\n"
    assert P.normalize_question("Is it? ") == "Is it?"
    with pytest.raises(ValueError):
        P.build_policy_prompt("  ")


def test_search_r1_document_lines_are_byte_exact():
    # Title line as stored (quotes kept), no colon after the number, whitespace inside kept, one
    # "\n" per document, the whole block stripped as Search-R1 strips it.
    contents = ['"Eiffel Tower"\nThe Eiffel Tower is a  wrought-iron tower.',
                '\nA passage whose title line is empty.',
                '"Paris"\nLine one.\nLine two  ']
    assert P.information_block(P.search_r1_documents(contents)) == (
        '\n\n<information>Doc 1(Title: "Eiffel Tower") The Eiffel Tower is a  wrought-iron tower.\n'
        'Doc 2(Title: ) A passage whose title line is empty.\n'
        'Doc 3(Title: "Paris") Line one.\nLine two</information>\n\n')
    # A row with no title line at all: Search-R1 takes the whole text as the title.
    assert P.search_r1_documents(["no title line here"]) == "Doc 1(Title: no title line here)"


def test_zerosearch_document_lines_are_byte_exact():
    assert P.information_block(P.zerosearch_documents(["first  doc", "second doc"])) == (
        "\n\n<information>Doc 1: first  doc\nDoc 2: second doc</information>\n\n")


def test_doc_format_default_follows_the_checkpoint_family():
    assert P.resolve_doc_format("auto", "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-3b-em-ppo") \
        == "search-r1"
    assert P.resolve_doc_format("auto", "Alibaba-NLP/ZeroSearch_wiki_V2_Qwen2.5_3B") == "zerosearch"
    assert P.resolve_doc_format("auto", None) == "zerosearch"
    assert P.resolve_doc_format("search-r1", "anything") == "search-r1"
    with pytest.raises(ValueError, match="doc_format"):
        P.resolve_doc_format("google")


@pytest.mark.parametrize("text,kind,content", [
    ("<think>hmm</think><search> capital of France </search>", "search", "capital of France"),
    ("<think>x</think><answer> Paris </answer>", "answer", "Paris"),
    # the first complete action wins, whichever tag it is
    ("<answer>A</answer><search>q</search>", "answer", "A"),
    ("<search>q1</search> then <answer>A</answer>", "search", "q1"),
    # unclosed or empty actions are invalid
    ("<think>thinking</think><search>unfinished", "invalid", ""),
    ("<search>   </search>", "invalid", ""),
    ("I will just say Beijing", "invalid", ""),
    # multi-line content is kept
    ("<answer>New\nYork</answer>", "answer", "New\nYork"),
])
def test_parse_action(text, kind, content):
    action = P.parse_action(text)
    assert (action.kind, action.content) == (kind, content)


def test_parse_action_end_is_just_past_the_closing_tag():
    text = "<search>q</search> trailing"
    assert text[: P.parse_action(text).end] == "<search>q</search>"


def test_extract_answer_never_reads_the_prompt_example():
    # The public code needed two <answer> matches because the prompt holds "<answer> Beijing
    # </answer>"; a response without an answer was then scored as "Beijing". Ours sees only the
    # response and returns None.
    assert P.extract_answer("<think>no idea</think>") is None
    assert P.extract_answer("<answer> Paris </answer>") == "Paris"
    assert P.extract_answer("<answer>a</answer> later <answer>b</answer>") == "b"


def test_document_lines_for_prompts_collapse_whitespace():
    assert P.format_documents(["first  doc", "second\ndoc"]) == "Doc 1: first doc\nDoc 2: second doc"


def test_finetuned_simulator_prompt_is_byte_exact():
    messages = P.finetuned_sim_messages("eiffel tower height", "How tall is the Eiffel Tower?",
                                        ["330 metres", "1,083 ft"], "useful")
    assert messages[0] == {"role": "system", "content": ""}
    assert messages[1]["role"] == "user"
    assert messages[1]["content"] == (
        "You are the Google search engine.\n"
        "Given a query, you need to generate five useful documents for the query.\n"
        "\n"
        'The user is trying to answer the question: "How tall is the Eiffel Tower?" whose answer '
        "is 330 metres.\n"
        "Each document should contain about 30 words, and these documents should contain useful "
        "information.\n"
        "\n"
        "Query: eiffel tower height\n"
        "Useful Output:\n")
    assert P.finetuned_sim_messages("q", "Q?", ["a"], "noisy")[1]["content"] == (
        "You are the Google search engine.\n"
        "Given a query, you need to generate five noisy documents for the query.\n"
        "\n"
        'The user is trying to answer the question: "Q?" whose answer is a.\n'
        "Each document should contain about 30 words, and these documents should contain noisy "
        "information.\n"
        "\n"
        "Query: q\n"
        "Noisy Output:\n")
    noisy = P.finetuned_sim_messages("q", "Q?", ["a"], "noisy", k=3)[1]["content"]
    assert "generate three noisy documents" in noisy and noisy.endswith("Noisy Output:\n")


def test_gold_answers_first_for_the_finetuned_style_joined_on_request():
    answers = ["", "NYC", "New York City", "NYC"]
    first = P.finetuned_sim_messages("q", "Q?", answers, "useful")[1]["content"]
    assert "whose answer is NYC.\n" in first
    joined = P.finetuned_sim_messages("q", "Q?", answers, "useful", gold="joined")[1]["content"]
    assert "whose answer is NYC or New York City.\n" in joined
    assert "(answer: NYC or New York City)" in P.prompt_sim_messages("q", "Q?", answers, "useful")[3][
        "content"]
    with pytest.raises(ValueError, match="gold style"):
        P.finetuned_sim_messages("q", "Q?", ["a"], "useful", gold="all")
    with pytest.raises(ValueError, match="unknown simulation mode"):
        P.finetuned_sim_messages("q", "Q?", ["a"], "random")
    with pytest.raises(ValueError, match="unknown simulation mode"):
        P.prompt_sim_messages("q", "Q?", ["a"], "Useful")


def test_prompt_simulator_has_a_one_shot_demo_per_mode():
    for mode in P.MODES:
        messages = P.prompt_sim_messages("q", "Q?", ["a"], mode, k=4)
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[2]["content"].startswith("Doc 1:")
        assert "Write 4 " + mode in messages[3]["content"]


@pytest.mark.parametrize("text,expected", [
    ("Doc 1: alpha\nDoc 2: beta\nDoc 3: gamma", ["alpha", "beta", "gamma"]),
    ("Document 1. alpha\n\nDocument 2: beta", ["alpha", "beta"]),
    ("**Doc 1:** alpha\n**Doc 2**: beta", ["alpha", "beta"]),
    ("1. alpha\n2) beta\n[3] gamma", ["alpha", "beta", "gamma"]),
    ("Doc 1 (Title: X): alpha", ["alpha"]),
    # numbering out of order or repeated still yields every document, in output order
    ("Doc 3: c\nDoc 1: a\nDoc 1: b", ["c", "a", "b"]),
    # a literal "Doc 6" inside a document does not cut it (the public code truncated here)
    ("Doc 1: see Doc 6 for details\nDoc 2: b", ["see Doc 6 for details", "b"]),
    # continuation lines belong to their document
    ("Doc 1: first line\ncontinued\nDoc 2: b", ["first line continued", "b"]),
    # no markers: paragraphs, then lines
    ("alpha para\n\nbeta para", ["alpha para", "beta para"]),
    ("one\ntwo\nthree", ["one", "two", "three"]),
    ("Doc 1:\nDoc 2: only this", ["only this"]),
    ("", []),
])
def test_parse_documents(text, expected):
    assert P.parse_documents(text, 5) == expected


def test_parse_documents_caps_at_k():
    text = "\n".join(f"Doc {i}: d{i}" for i in range(1, 9))
    assert P.parse_documents(text, 5) == ["d1", "d2", "d3", "d4", "d5"]
    with pytest.raises(ValueError):
        P.parse_documents(text, 0)


def test_passage_text_splits_flashrag_contents():
    assert P.passage_text('"Paris"\nParis is big.') == ("Paris", "Paris is big.")
    assert P.passage_text("no title line") == (None, "no title line")


def test_search_queries_lists_every_search_action_in_order():
    from zerosearch.protocol import search_queries

    response = ("<think> x </think>\n<search> first query </search>\n\n<information>Doc 1: a</information>\n"
                "<search>\nsecond</search> <answer> not a query </answer>")
    assert search_queries(response) == ["first query", "second"]
    assert search_queries("<answer> 1998 </answer>") == []
