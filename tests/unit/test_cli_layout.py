"""The command line's layout: a small root, one module per command group, shared options
with one spelling and one meaning, and settings errors as one line instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import feedbackloop.cli
from feedbackloop.cli import cli
from feedbackloop.cli.options import SHARED_OPTIONS
from feedbackloop.config import Settings

CLI_DIR = Path(feedbackloop.cli.__file__).parent


def _commands(group: click.Group = cli, path: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in group.commands.items():
        full = f"{path} {name}".strip()
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, full)
        else:
            yield full, cmd


def _options() -> Iterator[tuple[str, click.Option]]:
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p, click.Option):
                yield path, p


def _meaning(opt: click.Option) -> dict[str, object]:
    """What a user sees of an option: everything but whether it is required."""
    return {
        "opts": sorted(opt.opts + opt.secondary_opts),
        "dest": opt.name,
        "type": repr(opt.type),
        "default": opt.default,
        "help": opt.help,
        "envvar": opt.envvar,
        "flag": opt.is_flag,
        "metavar": opt.metavar,
        "show_default": opt.show_default,
    }


def _canonical(name: str) -> click.Option:
    decls, attrs = SHARED_OPTIONS[name]
    return click.Option(list(decls), **attrs)


def test_each_shared_option_means_the_same_in_every_command() -> None:
    users: dict[str, list[str]] = {name: [] for name in SHARED_OPTIONS}
    for path, opt in _options():
        for name in set(opt.opts) & set(SHARED_OPTIONS):
            assert _meaning(opt) == _meaning(_canonical(name)), f"{path} {name}"
            users[name].append(path)
    # Shared means shared: each is used by several commands (a single user belongs inline).
    assert {name: len(paths) for name, paths in users.items() if len(paths) < 2} == {}
    # The ones the issue found spelled or defaulted differently, now one each.
    assert len(users["--since"]) >= 7 and len(users["--json"]) >= 7
    assert len(users["--url"]) >= 10 and len(users["--experiment"]) >= 5


def test_a_shared_option_is_required_only_where_the_command_is_about_one_of_them() -> None:
    shared_dests = {_canonical(name).name for name in SHARED_OPTIONS}
    required = {
        (path, opt.name) for path, opt in _options() if opt.required and opt.name in shared_dests
    }
    assert required == {
        ("ab report", "experiment"),
        ("impact", "experiment"),
        ("regressions export", "prompt_version"),
    }


#: Option names that still mean different things in different commands, each with why; a
#: new name on this list needs a reason as good (a new clash fails the test below).
PER_COMMAND_MEANINGS = {
    "--control": "counts SUCCESSES/N in stats compare; a variant name in ab report / impact",
    "--weights": "W1/W2 of two variants in stats compare; VARIANT=W,... of any number in ab report",
    "--duration": "demo runs 20 s by default; simulate runs until Ctrl-C",
    "--rate": "demo offers 3000 events/s to show throughput; simulate 1000 as a steady load",
    "--examples": "sql: print the example queries (a flag); complaints: texts per cluster",
    "--max-rows": "sink run: rows per insert; sql: rows printed",
    "--seed": "the simulator's integer seed; export finetune's string seed of the split",
    "--top": "failures: rows of the table; regressions export: number of cases",
    "--out": "a suite file, a report base name, an export directory",
    "--port": "the port of the service the command starts (broker, web, metrics)",
    "--name": "prompts add: the prompt registered; list/show/diff: which prompt, if ambiguous",
    "--note": "prompts add: what changed in the prompt; experiments design: what is tested",
    "--guardrail": "experiments design: a metric the verdict watches; experiments create "
    "--canary: METRIC[:TOLERANCE], with the degradation the canary guard tolerates",
    "--candidate": "regressions run: the program that answers the suite; shadow report: the "
    "shadow candidate's version, as the app logged it",
}


def test_an_option_name_has_one_meaning_unless_listed_with_its_reason() -> None:
    meanings: dict[str, set[str]] = {}
    for _, opt in _options():
        m = _meaning(opt)
        meanings.setdefault(opt.opts[0], set()).add(repr(sorted(m.items(), key=str)))
    several = {name for name, ms in meanings.items() if len(ms) > 1}
    assert several == set(PER_COMMAND_MEANINGS)


def test_no_shared_option_hides_under_another_spelling() -> None:
    # e.g. a command-local '--as-json' or '--exp' beside the shared '--json' / '--experiment'
    dests = {_canonical(name).name: name for name in SHARED_OPTIONS}
    for path, opt in _options():
        if opt.name in dests:
            assert dests[opt.name] in opt.opts, f"{path}: {opt.opts} stores {opt.name}"


def test_no_option_re_declares_an_env_var_that_the_settings_read() -> None:
    setting_vars = {f"FEEDBACKLOOP_{name.upper()}" for name in Settings.model_fields}
    clashes = [
        (path, opt.opts[0], opt.envvar)
        for path, opt in _options()
        if opt.envvar
        and set([opt.envvar] if isinstance(opt.envvar, str) else opt.envvar) & setting_vars
    ]
    assert clashes == []


#: Options that override a setting, and the setting.
OVERRIDES = {
    ("sink run", "--max-rows"): "sink_max_rows",
    ("sink run", "--max-age"): "sink_max_age",
    ("sink run", "--group-id"): "sink_group_id",
    ("worker", "--grace"): "stream_grace_s",
    ("worker", "--retention"): "stream_retention_s",
    ("web", "--port"): "web_port",
    ("broker", "--port"): "broker_port",
    ("db migrate", "--ttl-days"): "ttl_days",
    ("worker", "--window"): "stream_window_s",
    ("worker", "--lateness"): "stream_lateness_s",
    ("sink run", "--raw"): "sink_raw",
    ("metrics", "--port"): "metrics_port",
}


def test_an_option_that_overrides_a_setting_names_it_instead_of_its_value() -> None:
    found = {(path, opt.opts[0]): opt for path, opt in _options()}
    for key, setting in OVERRIDES.items():
        opt = found[key]
        assert opt.default is None and setting in (opt.help or ""), key
        default = Settings.model_fields[setting].default
        if default is not None:
            assert str(default) not in (opt.help or ""), key


def test_no_command_module_is_over_400_lines() -> None:
    sizes = {p.name: len(p.read_text("utf-8").splitlines()) for p in CLI_DIR.glob("*.py")}
    assert len(sizes) >= 8
    assert {name: n for name, n in sizes.items() if n > 400} == {}
    assert sizes["root.py"] <= 150


def test_every_command_defined_in_a_module_is_registered_on_the_root() -> None:
    import importlib

    reachable = {id(cmd) for _, cmd in _commands()} | {
        id(g) for g in cli.commands.values() if isinstance(g, click.Group)
    }
    for path in CLI_DIR.glob("*.py"):
        module = importlib.import_module(f"feedbackloop.cli.{path.stem}")
        for name, obj in vars(module).items():
            if isinstance(obj, click.Command) and obj is not cli:
                assert id(obj) in reachable, f"{path.name}: {name} is not registered"


def test_a_bad_setting_is_one_line_naming_it_and_the_problem() -> None:
    res = CliRunner().invoke(cli, ["config", "show"], env={"FEEDBACKLOOP_BROKER_PORT": "abc"})
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert "broker_port" in lines[0] and "FEEDBACKLOOP_BROKER_PORT" in lines[0]
    assert "valid integer" in lines[0] and "'abc'" in lines[0]
    assert lines[0].startswith("error: ")


def test_a_bad_setting_ends_the_real_process_without_a_traceback() -> None:
    env = {"FEEDBACKLOOP_BROKER_PORT": "abc", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "feedbackloop", "config", "show"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "FEEDBACKLOOP_BROKER_PORT" in lines[0], out.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FEEDBACKLOOP_WEB_PORT": "70000"}, "web_port (FEEDBACKLOOP_WEB_PORT)"),
        ({"FEEDBACKLOOP_LOG_FORMAT": "xml"}, "log_format (FEEDBACKLOOP_LOG_FORMAT)"),
        ({"FEEDBACKLOOP_WEB_SECRET_KEYS": "not json"}, "web_secret_keys"),
    ],
)
def test_other_bad_settings_name_the_setting_too(env: dict[str, str], expected: str) -> None:
    res = CliRunner().invoke(cli, ["config", "show"], env=env)
    assert res.exit_code == 1 and expected in res.output, res.output
    assert "Traceback" not in res.output


def test_a_secret_setting_is_not_echoed_when_it_is_bad() -> None:
    secret = "sk-live-" + "x" * 20
    res = CliRunner().invoke(
        cli,
        ["config", "show"],
        env={"FEEDBACKLOOP_WEB_SECRET_KEYS": f'{{"app": {{"k": "{secret}"}}}}'},
    )
    assert res.exit_code == 1 and "web_secret_keys" in res.output
    assert secret not in res.output


def test_a_broken_settings_file_is_one_message(tmp_path: Path) -> None:
    bad = tmp_path / "feedbackloop.toml"
    bad.write_text("broker_port = [unclosed\n", "utf-8")
    res = CliRunner().invoke(cli, ["--config", str(bad), "config", "show"])
    assert res.exit_code == 1 and str(bad) in res.output and "Traceback" not in res.output


def test_a_settings_file_that_does_not_exist_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "config", "show"])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_commands_that_need_no_settings_run_whatever_the_environment_holds() -> None:
    env = {"FEEDBACKLOOP_BROKER_PORT": "abc"}
    res = CliRunner().invoke(
        cli, ["stats", "compare", "--control", "50/100", "--treatment", "60/100"], env=env
    )
    assert res.exit_code == 0, res.output
    assert CliRunner().invoke(cli, ["config", "docs"], env=env).exit_code == 0


def test_every_option_says_what_it_does() -> None:
    assert [(path, opt.opts[0]) for path, opt in _options() if not opt.help] == []


def _numeric_overrides() -> list[tuple[tuple[str, str], str]]:
    found = {(path, o.opts[0]): o for path, o in _options()}
    numbers = (click.types.FloatParamType, click.types.IntParamType)
    return [(k, v) for k, v in sorted(OVERRIDES.items()) if isinstance(found[k].type, numbers)]


@pytest.mark.parametrize(
    ("key", "setting"),
    _numeric_overrides(),
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_an_option_accepts_exactly_the_values_its_setting_accepts(
    key: tuple[str, str], setting: str
) -> None:
    # The option's value goes into a config without passing the setting's validation again,
    # so a negative --grace must fail as FEEDBACKLOOP_STREAM_GRACE_S=-1 does.
    from pydantic import ValidationError

    opt = {(path, o.opts[0]): o for path, o in _options()}[key]
    for value in ("-1", "0", "0.5", "1", "65535", "65536"):
        try:
            opt.type.convert(value, opt, None)
            option_ok = True
        except click.BadParameter:
            option_ok = False
        try:
            Settings(**{setting: value})
            setting_ok = True
        except ValidationError:
            setting_ok = False
        assert option_ok == setting_ok, (key, value, option_ok, setting_ok)


def test_loading_the_command_line_loads_no_engine_or_analysis_library() -> None:
    # Every command module imports its library lazily: --help and stats compare stay quick.
    heavy = ("numpy", "scipy", "sklearn", "faust", "confluent_kafka", "clickhouse_connect")
    code = (
        "import sys, feedbackloop.cli; "
        f"print([m for m in {heavy!r} + ('feedbackloop.analysis',) if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
