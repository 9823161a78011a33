"""The command line as a user types it (real processes, plain output when piped)."""

import subprocess
import sys


def zs(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "zerosearch.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands():
    r = zs("--help")
    assert r.returncode == 0 and "search" in r.stdout and "serve" in r.stdout


def test_search_prints_doc_lines(tiny_corpus):
    r = zs("search", "capital of Germany", "--engine", "bm25", "--corpus", str(tiny_corpus), "-k", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("Doc 1: (Title: Berlin) Berlin is the capital") and lines[1].startswith("Doc 2: ")


def test_search_json_and_shortfall(tiny_corpus):
    import json

    r = zs("search", "xylophone", "--engine", "bm25", "--corpus", str(tiny_corpus), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["shortfall"] == 5
    assert "0 of 5 documents returned" in r.stderr


def test_user_mistakes_are_one_line_errors(tiny_corpus, tmp_path):
    cases = [
        (["search", "q", "--engine", "bm25"], "needs a corpus"),
        (["search", "q", "--engine", "google"], "unknown engine 'google'"),
        (["search", "q", "--engine", "bm25", "--corpus", str(tmp_path / "no.jsonl")], "corpus not found"),
        (["search", "q", "--model", "embedded:nope"], "unknown embedded model"),
        (["search", "", "--engine", "bm25", "--corpus", str(tiny_corpus)], "query is empty"),
        (["search", "q", "--mode", "sometimes"], "mode must be one of"),
    ]
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("engine:\n  kind: bm25\n  corpuss: x\n")
    cases.append((["search", "q", "--config", str(bad_yaml)], "unknown key(s) corpuss"))
    for args, message in cases:
        r = zs(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in " ".join(r.stderr.split()), (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_config_file_and_flags_merge(tiny_corpus, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"engine:\n  kind: bm25\n  corpus: {tiny_corpus}\n  topk: 1\n")
    r = zs("search", "capital", "--config", str(cfg))
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1
    r = zs("search", "capital", "--config", str(cfg), "--topk", "2")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2


def test_eval_and_ask_default_to_the_training_rollout_budget():
    import inspect

    from zerosearch import cli
    from zerosearch.rollout import RolloutConfig

    for command in (cli.eval_run, cli.ask):
        params = inspect.signature(command).parameters
        assert params["max_turn_tokens"].default.default == RolloutConfig.max_turn_tokens
        assert params["max_turns"].default.default == RolloutConfig.max_turns


def test_eval_flags_take_default_and_help_from_evalconfig():
    import inspect

    from zerosearch import cli
    from zerosearch.evaluate import EvalConfig

    params = inspect.signature(cli.eval_run).parameters
    assert params["batch_size"].default.default == EvalConfig.batch_size
    assert params["split"].default.default == EvalConfig.split
    assert params["batch_size"].default.help.startswith("Questions per batch")


def _option_names(command) -> dict[str, tuple]:
    import inspect

    return {name: tuple(p.default.param_decls) for name, p in inspect.signature(command).parameters.items()
            if getattr(p.default, "param_decls", None)}


def test_policy_and_simulator_flags_need_no_prefix_and_never_collide():
    """On commands with a policy, --temperature/--device/--seed are the policy's and the simulator's
    are --sim-*; on commands without one, the plain names also reach the simulator."""
    from zerosearch import cli

    for command in (cli.eval_run, cli.ask):
        names = _option_names(command)
        assert "--temperature" in names["policy_temperature"] and "--device" in names["policy_device"]
        assert names["temperature"] == ("--sim-temperature",) and names["device"] == ("--sim-device",)
        every = [n for decls in names.values() for n in decls]
        assert len(every) == len(set(every)), "a flag name is taken twice"
    assert "--seed" in _option_names(cli.eval_run)["eval_seed"]
    for command in (cli.serve, cli.search, cli.sim_fidelity):
        names = _option_names(command)
        assert set(names["temperature"]) == {"--sim-temperature", "--temperature"}
        assert set(names["seed"]) == {"--sim-seed", "--seed"}
    assert _option_names(cli.train)["temperature"] == ("--sim-temperature",)
