"""The import package: one regular package, a handful of names at the top, loaded lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import feedbackloop

ROOT = Path(feedbackloop.__file__).parent


def test_every_package_directory_is_a_regular_package() -> None:
    # A directory without __init__.py is a namespace package: setuptools' find_packages
    # skips it and everything under it, and mypy sees its modules under two names.
    dirs = [d for d in ROOT.rglob("*") if d.is_dir() and any(d.glob("*.py"))]
    assert dirs, "no subpackages found"
    missing = [str(d.relative_to(ROOT)) for d in [ROOT, *dirs] if not (d / "__init__.py").exists()]
    assert missing == []


def test_top_level_names_resolve_to_the_subpackages() -> None:
    from feedbackloop.config import Settings
    from feedbackloop.errors import FeedbackLoopError
    from feedbackloop.producers import FeedbackClient

    assert feedbackloop.FeedbackClient is FeedbackClient
    assert feedbackloop.Settings is Settings
    assert feedbackloop.FeedbackLoopError is FeedbackLoopError
    assert set(feedbackloop.__all__) >= {"FeedbackClient", "Settings", "__version__"}
    assert feedbackloop.__version__.count(".") >= 2


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        feedbackloop.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_schemas_does_not_load_the_sdk() -> None:
    code = (
        "import sys, feedbackloop.schemas; "
        "print('feedbackloop.producers.client' in sys.modules, 'confluent_kafka' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# Which analysis subpackage may import which (feedbackloop/analysis/__init__.py): statistics
# are pure; reads build on statistics; reports and failures on reads; loop on failures.
ANALYSIS_LAYERS = {
    "statistics": set(),
    "reads": {"statistics"},
    "reports": {"statistics", "reads"},
    "failures": {"statistics", "reads"},
    "loop": {"statistics", "reads", "failures"},
}


def _imported_modules(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_analysis_subpackages_import_one_way_only() -> None:
    wrong = []
    for layer, allowed in ANALYSIS_LAYERS.items():
        for path in (ROOT / "analysis" / layer).glob("*.py"):
            for mod in _imported_modules(path):
                parts = mod.split(".")
                inside = parts[:2] == ["feedbackloop", "analysis"] and len(parts) > 2
                if inside and parts[2] != layer and parts[2] not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert wrong == []
    assert {p.name for p in (ROOT / "analysis").iterdir() if p.is_dir()} - {"__pycache__"} == set(
        ANALYSIS_LAYERS
    )


def test_the_statistics_import_nothing_that_touches_sql_or_io() -> None:
    io_modules = ("feedbackloop.sinks", "feedbackloop.infra", "feedbackloop.config")
    io_modules += ("clickhouse_connect", "chdb", "confluent_kafka", "sqlite3", "socket")
    io_modules += ("urllib", "http", "subprocess", "os", "pathlib", "io", "shutil")
    wrong = []
    for path in (ROOT / "analysis" / "statistics").glob("*.py"):
        for mod in _imported_modules(path):
            if mod.startswith(io_modules):
                wrong.append(f"{path.name} imports {mod}")
    assert wrong == []
    code = (
        "import sys, feedbackloop.analysis.statistics; "
        "print(sorted(m for m in ('feedbackloop.sinks', 'feedbackloop.config', "
        "'clickhouse_connect', 'chdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
