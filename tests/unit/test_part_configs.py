"""Per-part configs come from the settings: each default is written once, in Settings, and
the command line passes overrides, not defaults."""

from __future__ import annotations

import dataclasses

import pytest

from feedbackloop.config import Settings, default_of
from feedbackloop.sinks.worker import SinkConfig
from feedbackloop.stream_jobs.config import StreamConfig

STREAM_FIELDS = {
    "grace_s": "stream_grace_s",
    "window_s": "stream_window_s",
    "allowed_lateness_s": "stream_lateness_s",
    "retention_s": "stream_retention_s",
    "verdict_check_s": "stream_verdict_check_s",
}
SINK_FIELDS = {
    "raw": "sink_raw",
    "group_id": "sink_group_id",
    "max_rows": "sink_max_rows",
    "max_age_s": "sink_max_age",
}


@pytest.mark.parametrize(
    ("cls", "fields"), [(StreamConfig, STREAM_FIELDS), (SinkConfig, SINK_FIELDS)]
)
def test_a_part_configs_defaults_are_the_settings_defaults(
    cls: type, fields: dict[str, str]
) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert {k: defaults[k] for k in fields} == {k: default_of(s) for k, s in fields.items()}


def test_stream_config_takes_every_stream_setting_and_only_given_overrides() -> None:
    s = Settings(
        stream_grace_s=5,
        stream_window_s=7,
        stream_lateness_s=11,
        stream_retention_s=13,
        stream_alert_webhook="https://hooks.example/x",
        stream_verdict_check_s=17,
    )
    c = StreamConfig.from_settings(s)
    assert (c.grace_s, c.window_s, c.allowed_lateness_s, c.retention_s) == (5, 7, 11, 13)
    assert c.verdict_check_s == 17
    assert c.alert_webhook_url == "https://hooks.example/x"
    # An option left out (None) means the setting; a given one wins, zero included.
    c = StreamConfig.from_settings(s, grace_s=0.0, window_s=None, alert_webhook_url=None)
    assert (c.grace_s, c.window_s, c.alert_webhook_url) == (0.0, 7, "https://hooks.example/x")


def test_sink_config_takes_every_sink_setting_and_only_given_overrides() -> None:
    s = Settings(sink_raw=True, sink_group_id="g", sink_max_rows=9, sink_max_age=0.25)
    c = SinkConfig.from_settings(s)
    assert (c.raw, c.group_id, c.max_rows, c.max_age_s) == (True, "g", 9, 0.25)
    c = SinkConfig.from_settings(s, raw=False, max_rows=None, query_endpoint=False)
    assert (c.raw, c.max_rows, c.query_endpoint) == (False, 9, False)


def test_an_environment_variable_reaches_the_part_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDBACKLOOP_SINK_MAX_ROWS", "123")
    monkeypatch.setenv("FEEDBACKLOOP_STREAM_GRACE_S", "4.5")
    assert SinkConfig.from_settings(Settings()).max_rows == 123
    assert StreamConfig.from_settings(Settings()).grace_s == 4.5


def test_a_given_option_overrides_its_setting_and_a_missing_one_keeps_it() -> None:
    from feedbackloop.cli.base import overridden

    s = Settings(broker_port=9100, ttl_days=30)
    o = overridden(s, broker_port=0, ttl_days=None, broker_storage=None)
    assert (o.broker_port, o.ttl_days, o.broker_storage) == (0, 30, s.broker_storage)
    assert overridden(s, ttl_days=None) is s
    with pytest.raises(AssertionError, match="not settings"):
        overridden(s, no_such_setting=1)
