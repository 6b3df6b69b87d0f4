"""The design registry: each experiment's design, stored with its data (table
``experiment_designs``, schema migration 4).

``feedbackloop experiments design`` registers a design; ``ab report``, the dashboard and
the alerts read it with :func:`fetch_design` through the read-only query path, so they judge
the experiment by the rules fixed before its data was seen.

Designs are immutable. Re-registering the same design is a no-op; a different one for the
same experiment is refused: a design changed after looking at the data no longer keeps the
error rates it promised. Start a new experiment name instead. Writes follow the prompt
registry's rules (:mod:`feedbackloop.analysis.prompts`): a ClickHouse server takes them from
any process; embedded chDB only while no sink worker holds it
(:mod:`feedbackloop.analysis.reads.writes`).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from feedbackloop.analysis.reads.literals import quote
from feedbackloop.analysis.statistics.design import ExperimentDesign
from feedbackloop.config import Settings
from feedbackloop.errors import ClickHouseError, ConfigError, FeedbackLoopError

__all__ = [
    "TABLE",
    "design_row",
    "experiment_app",
    "fetch_design",
    "register_design",
    "registered_experiments",
]

TABLE = "experiment_designs"


def _table() -> Any:
    # The registry's columns as sinks/tables.py declares them (tests hold that declaration to
    # the migrated table). Imported on use: the sinks package is heavy.
    from feedbackloop.sinks.tables import TABLES

    return TABLES[TABLE]


def design_row(d: ExperimentDesign) -> dict[str, Any]:
    """The stored row of ``d``, by column name (``created_at`` is ClickHouse's)."""
    return {
        "experiment": d.experiment,
        "primary_metric": d.primary,
        "guardrails": list(d.guardrails),
        "mde": d.mde,
        "mde_relative": d.mde_relative,
        "alpha": d.alpha,
        "power": d.power,
        "mode": d.mode,
        "baseline": d.baseline,
        "sd": d.sd,
        "planned_sessions": d.planned_sessions,
        "weights_json": json.dumps(d.weights, sort_keys=True),
        "note": d.note,
        "created_by": d.created_by,
    }


def _same_rules(a: ExperimentDesign, b: ExperimentDesign) -> bool:
    """Equal but for who registered it and the note."""
    ra, rb = design_row(a), design_row(b)
    return all(ra[k] == rb[k] for k in ra if k not in ("note", "created_by"))


def _from_row(row: dict[str, Any]) -> ExperimentDesign:
    def opt(v: Any) -> float | None:
        return None if v is None else float(v)

    planned = row["planned_sessions"]
    return ExperimentDesign(
        experiment=str(row["experiment"]),
        primary=str(row["primary_metric"]),
        guardrails=tuple(str(g) for g in row["guardrails"] or ()),
        mde=opt(row["mde"]),
        mde_relative=bool(row["mde_relative"]),
        alpha=float(row["alpha"]),
        power=float(row["power"]),
        mode=str(row["mode"]),
        baseline=opt(row["baseline"]),
        sd=opt(row["sd"]),
        planned_sessions=None if planned is None else int(planned),
        weights={str(k): float(v) for k, v in json.loads(row["weights_json"] or "{}").items()},
        note=str(row["note"]),
        registered=True,
        created_by=str(row["created_by"]),
        created_at=str(row["created_at"]),
    )


def _select_sql(experiment: str, db: str | None = None) -> str:
    table = f"{db}.{TABLE}" if db else TABLE
    return (
        f"SELECT {', '.join(_table().names)}, toString(created_at) AS created_at "
        f"FROM {table} FINAL WHERE experiment = {quote(experiment)}"
    )


def _missing_table(e: Exception) -> bool:
    text = str(e)
    return "UNKNOWN_TABLE" in text or "does not exist" in text or "doesn't exist" in text


def fetch_design(runner: Any, experiment: str) -> ExperimentDesign | None:
    """The registered design of ``experiment``; ``None`` if it has none (or the database
    predates the registry). ``runner`` runs read-only SQL (``queries.Runner``)."""
    try:
        res = runner(_select_sql(experiment))
    except ClickHouseError as e:
        if _missing_table(e):
            return None
        raise
    rows = [dict(zip(res.columns, r, strict=True)) for r in res.rows]
    return _from_row(rows[0]) if rows else None


def registered_experiments(runner: Any) -> list[str]:
    """Names of the experiments with a registered design (empty before migration 4)."""
    try:
        res = runner(f"SELECT DISTINCT experiment FROM {TABLE} FINAL ORDER BY experiment")
    except ClickHouseError as e:
        if _missing_table(e):
            return []
        raise
    return [str(r[0]) for r in res.rows]


def experiment_app(runner: Any, experiment: str) -> str:
    """The app an experiment's interactions come from, or "" when they come from several
    (an experiment's name is not scoped by app): who an alert about it belongs to."""
    res = runner(
        f"SELECT DISTINCT app_id FROM interactions WHERE experiment = {quote(experiment)} LIMIT 2"
    )
    apps = [str(r[0]) for r in res.rows]
    return apps[0] if len(apps) == 1 else ""


def register_design(
    settings: Settings, design: ExperimentDesign, *, client: Any = None
) -> tuple[ExperimentDesign, bool]:
    """Store ``design``; returns the stored design and whether it was new (``False``: the
    same design was registered before). A different design for the same experiment raises
    :class:`ConfigError`.
    """
    from feedbackloop.analysis.reads.writes import database_name, whoami, writable_client
    from feedbackloop.sinks.migrations import migrate

    if not design.experiment.strip():
        raise ConfigError("a design needs the experiment's name")
    db = database_name(settings)
    own = client is None
    if own:
        client = writable_client(settings)
    try:
        migrate(client, db)  # the registry table arrives with migration 4

        def current() -> ExperimentDesign | None:
            res = client.query(_select_sql(design.experiment, db))
            rows = [dict(zip(res.column_names, r, strict=True)) for r in res.result_rows]
            return _from_row(rows[0]) if rows else None

        found = current()
        if found is not None:
            if _same_rules(found, design):
                return found, False
            raise ConfigError(
                f"experiment {design.experiment!r} already has a design (registered "
                f"{found.created_at[:19]} by {found.created_by or '?'}: {found.summary()}); "
                "designs are immutable, because a design changed after the data was seen "
                "loses its error rates: register the new design under a new experiment name"
            )
        stored = ExperimentDesign(
            **{
                **{f: getattr(design, f) for f in design.__dataclass_fields__},
                "created_by": design.created_by or whoami(),
            }
        )
        from feedbackloop.sinks.tables import Source

        table = _table()
        row = table.row(Source(SimpleNamespace(**design_row(stored))))
        client.insert(TABLE, [row], database=db, column_names=list(table.names))
        result = current()
        assert result is not None
        return result, True
    except FeedbackLoopError:
        raise
    except Exception as e:
        raise ClickHouseError(f"cannot register the design of {design.experiment}: {e}") from e
    finally:
        if own:
            client.close()
