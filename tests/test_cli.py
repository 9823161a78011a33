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


def test_no_command_takes_a_flag_name_twice():
    from zerosearch import cli

    for command in (cli.search, cli.serve, cli.train, cli.eval_run, cli.ask, cli.sim_collect,
                    cli.sim_fidelity, cli.quickstart):
        every = [n for decls in _option_names(command).values() for n in decls]
        assert len(every) == len(set(every)), (command.__name__, sorted(every))


def test_every_config_file_is_read_by_sections_and_given_flags_win(tiny_corpus, tmp_path,
                                                                   monkeypatch):
    """One kind of --config file: eval takes a train preset's engine and rollout budget (not its
    sampling temperature), serve its server section; a flag typed on the command line wins."""
    import json

    from typer.testing import CliRunner

    import zerosearch.evaluate
    import zerosearch.generation.endpoint
    import zerosearch.server
    from zerosearch import cli

    preset = tmp_path / "preset.yaml"
    preset.write_text(f"engine:\n  kind: bm25\n  corpus: {tiny_corpus}\n  topk: 2\n"
                      "rollout:\n  max_turns: 2\n  max_turn_tokens: 77\n  max_obs_tokens: 99\n"
                      "  temperature: 1.0\n"
                      "server:\n  port: 7123\n  max_query_chars: 300\n")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "capital of Germany?", "golden_answers": ["Berlin"]}) + "\n")
    seen = {}
    monkeypatch.setattr(zerosearch.generation.endpoint, "load_policy_anywhere",
                        lambda *a, **k: (None, None))
    monkeypatch.setattr(zerosearch.evaluate, "evaluate",
                        lambda cfg, *a, **k: seen.setdefault("eval", []).append(cfg))
    monkeypatch.setattr(zerosearch.server, "serve",
                        lambda engine, cfg, **k: seen.setdefault("serve", []).append(cfg))
    runner = CliRunner()
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").write_text("")
    for extra in ([], ["--max-turn-tokens", "50"]):
        r = runner.invoke(cli.app, ["eval", "-m", "x", "-o", str(out), "-d", str(qa), "--config",
                                    str(preset), *extra])
        assert r.exit_code == 0, r.output
    given, flagged = seen["eval"]
    assert (given.rollout.max_turns, given.rollout.max_turn_tokens, given.rollout.max_obs_tokens) == (2, 77, 99)
    assert given.rollout.temperature == 0.0 and given.rollout.topk == 2  # greedy; the engine's topk
    assert flagged.rollout.max_turn_tokens == 50 and flagged.rollout.max_obs_tokens == 99
    for extra in ([], ["--port", "7999"]):
        r = runner.invoke(cli.app, ["serve", "--config", str(preset), *extra])
        assert r.exit_code == 0, r.output
    from_file, flagged = seen["serve"]
    assert (from_file.port, from_file.max_query_chars, from_file.default_topk) == (7123, 300, 2)
    assert flagged.port == 7999 and flagged.max_query_chars == 300
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  portt: 1\n")
    r = runner.invoke(cli.app, ["serve", "--engine", "bm25", "--corpus", str(tiny_corpus), "--config",
                                str(bad)])
    assert r.exit_code == 2 and "server: unknown key(s) portt" in " ".join(r.output.split())
