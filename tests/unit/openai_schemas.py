"""JSON Schemas of OpenAI's fine-tuning line formats, written from the documentation.

An independent check of :mod:`feedbackloop.analysis.loop.formats` (which validates by hand):
supervised chat lines (``{"messages": [...]}``) and preference / DPO lines
(``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``).
"""

from __future__ import annotations

from typing import Any

_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "weight": {"enum": [0, 1]},
    },
    "additionalProperties": False,
}
_ASSISTANT = {
    **_MESSAGE,
    "properties": {**_MESSAGE["properties"], "role": {"const": "assistant"}},
}

CHAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": _MESSAGE,
            "contains": {"type": "object", "properties": {"role": {"const": "assistant"}}},
        },
        "tools": {"type": "array"},
        "parallel_tool_calls": {"type": "boolean"},
    },
    "additionalProperties": False,
}

PREFERENCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input", "preferred_output", "non_preferred_output"],
    "properties": {
        "input": {
            "type": "object",
            "required": ["messages"],
            "properties": {
                "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                "tools": {"type": "array"},
                "parallel_tool_calls": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "preferred_output": {"type": "array", "minItems": 1, "maxItems": 1, "items": _ASSISTANT},
        "non_preferred_output": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": _ASSISTANT,
        },
    },
    "additionalProperties": False,
}
