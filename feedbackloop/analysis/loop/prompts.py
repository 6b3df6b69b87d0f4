"""The prompt-version registry: the text behind every ``prompt_version``, stored with the data.

A version is ``(name, version)`` with its text, parent version and a note; ``version`` is
what interactions carry in ``prompt_version``, so a failure slice such as
``prompt_version=v1.2`` leads straight to the text that caused it, and a new version to the
parent it fixes. The table (``prompt_versions``) is created by schema migration 3.

Versions are immutable: adding an existing version again with the same text is a no-op,
with a different text an error (make a new version). Reads go through the read-only query
path (:func:`feedbackloop.sinks.run_query`), so they work while the sink worker runs.

Writes need a normal client (:mod:`feedbackloop.analysis.reads.writes`): while a sink worker
holds embedded chDB, ``prompts add`` refuses with :class:`DatabaseBusy`, saying which process
holds it: stop the worker for the moment of the write, or use a ClickHouse server.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from feedbackloop.analysis.reads.literals import quote
from feedbackloop.analysis.reads.writes import (
    DatabaseBusy,
    database_name,
    whoami,
    writable_client,
)
from feedbackloop.config import Settings
from feedbackloop.errors import ClickHouseError, ConfigError, FeedbackLoopError

if TYPE_CHECKING:
    from feedbackloop.sinks.tables import Table

__all__ = [
    "DatabaseBusy",
    "PromptVersion",
    "add_prompt",
    "diff_prompts",
    "diff_versions",
    "get_prompt",
    "list_prompts",
]

TABLE = "prompt_versions"


#: Server error names meaning the registry was never created (the database neither).
_NO_REGISTRY = ("UNKNOWN_TABLE", "UNKNOWN_DATABASE")


@dataclass(frozen=True)
class PromptVersion:
    """One registered prompt version."""

    name: str
    version: str
    text: str
    text_sha256: str
    parent_version: str = ""
    note: str = ""
    created_by: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _table() -> Table:
    # The registry's columns as sinks/tables.py declares them (one per PromptVersion field,
    # in order; tests/unit/test_table_declaration.py). Imported on use: the sinks package is heavy.
    from feedbackloop.sinks.tables import TABLES

    return TABLES[TABLE]


def _select_list() -> str:
    return ", ".join((*_table().names, "toString(created_at)"))


def _select(settings: Settings, where: str, url: str | None) -> list[PromptVersion]:
    from feedbackloop.sinks import run_query

    sql = (
        f"SELECT {_select_list()} "
        f"FROM {database_name(settings)}.{TABLE} FINAL {where} ORDER BY name, created_at, version"
    )
    try:
        res = run_query(settings, sql, url=url, max_rows=100_000)
    except ClickHouseError as e:
        if e.name in _NO_REGISTRY:
            raise ConfigError(
                f"no prompt registry in database {settings.clickhouse_database}: "
                "run `feedbackloop db migrate` first"
            ) from e
        raise
    return [PromptVersion(*(str(v) for v in row)) for row in res.rows]


def list_prompts(
    settings: Settings, name: str | None = None, *, url: str | None = None
) -> list[PromptVersion]:
    """Every registered version (of ``name``, if given), oldest first."""
    where = f"WHERE name = {quote(name)}" if name else ""
    return _select(settings, where, url)


def get_prompt(
    settings: Settings, version: str, name: str | None = None, *, url: str | None = None
) -> PromptVersion:
    """The version ``version`` (of ``name``; needed only if two prompts share the label)."""
    where = f"WHERE version = {quote(version)}"
    if name:
        where += f" AND name = {quote(name)}"
    found = _select(settings, where, url)
    if not found:
        raise ConfigError(f"no prompt version {version!r}" + (f" of {name!r}" if name else ""))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ConfigError(f"version {version!r} exists for several prompts ({names}): add --name")
    return found[0]


def add_prompt(
    settings: Settings,
    name: str,
    version: str,
    text: str,
    *,
    parent: str | None = None,
    note: str = "",
    created_by: str | None = None,
    client: Any = None,
) -> tuple[PromptVersion, bool]:
    """Register a version; returns it and whether it was new (False: identical re-add).

    ``client`` (a clickhouse-connect client able to write) is used when given; otherwise
    one is opened from the settings, after checking that no sink worker holds embedded chDB.
    """
    from feedbackloop.sinks.migrations import migrate

    if not name.strip() or not version.strip():
        raise ConfigError("a prompt needs a non-empty name and version")
    if not text.strip():
        raise ConfigError("the prompt text is empty")
    db = database_name(settings)
    own = client is None
    if own:
        client = writable_client(settings)
    try:
        migrate(client, db)  # the registry table arrives with migration 3

        def existing(v: str) -> list[Any]:
            return list(
                client.query(
                    f"SELECT text_sha256 FROM {db}.{TABLE} FINAL "
                    "WHERE name = {n:String} AND version = {v:String}",
                    parameters={"n": name, "v": v},
                ).result_rows
            )

        sha = _sha(text)
        rows = existing(version)
        if rows:
            if rows[0][0] == sha:
                return get_prompt_with(client, db, name, version), False
            raise ConfigError(
                f"{name} {version} is already registered with a different text; versions are "
                "immutable: add a new version (with --parent {version})"
            )
        if parent and not existing(parent):
            raise ConfigError(f"parent version {parent!r} of {name!r} is not registered")
        from feedbackloop.sinks.tables import Source

        new = PromptVersion(name, version, text, sha, parent or "", note, created_by or whoami())
        table = _table()
        client.insert(TABLE, [table.row(Source(new))], database=db, column_names=list(table.names))
        return get_prompt_with(client, db, name, version), True
    except FeedbackLoopError:
        raise
    except Exception as e:
        raise ClickHouseError.from_driver(e, f"cannot register {name} {version}: {e}") from e
    finally:
        if own:
            client.close()


def get_prompt_with(client: Any, db: str, name: str, version: str) -> PromptVersion:
    row = client.query(
        f"SELECT {_select_list()} FROM {db}.{TABLE} FINAL "
        "WHERE name = {n:String} AND version = {v:String}",
        parameters={"n": name, "v": version},
    ).result_rows[0]
    return PromptVersion(*(str(v) for v in row))


def diff_prompts(old: PromptVersion, new: PromptVersion, *, context: int = 3) -> str:
    """A unified diff of two versions' texts, headed by their labels."""
    lines = difflib.unified_diff(
        old.text.splitlines(keepends=True),
        new.text.splitlines(keepends=True),
        fromfile=f"{old.name} {old.version}",
        tofile=f"{new.name} {new.version}",
        n=context,
    )
    out = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return out or f"{old.version} and {new.version} have the same text\n"


def diff_versions(
    settings: Settings,
    old: str,
    new: str | None = None,
    name: str | None = None,
    *,
    url: str | None = None,
) -> str:
    """:func:`diff_prompts` of two registered versions; without ``new``, of ``old`` against
    its parent."""
    if new is None:
        child = get_prompt(settings, old, name, url=url)
        if not child.parent_version:
            raise ConfigError(f"{old} has no parent version: give two versions")
        parent = get_prompt(settings, child.parent_version, child.name, url=url)
        return diff_prompts(parent, child)
    return diff_prompts(
        get_prompt(settings, old, name, url=url), get_prompt(settings, new, name, url=url)
    )
