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
