"""Validators for the fine-tuning file formats we write, from OpenAI's documentation.

* Supervised (chat) fine-tuning: one JSON object per line, ``{"messages": [...]}`` where each
  message has a ``role`` (``system``, ``developer``, ``user``, ``assistant``, ``tool``) and a
  string ``content``, an assistant message may carry ``weight`` 0 or 1, and at least one
  assistant message is present. Optional top-level keys: ``tools``, ``parallel_tool_calls``.
  (OpenAI API reference, "The chat input format for fine-tuning"; most other providers and
  trainers accept the same shape.)
* Preference fine-tuning (DPO): ``{"input": {"messages": [...]}, "preferred_output":
  [assistant message], "non_preferred_output": [assistant message]}``; ``input`` may also hold
  ``tools`` and ``parallel_tool_calls``; each output holds exactly one assistant message.
  (OpenAI guide "Direct preference optimization", data format; API reference "The
  per-line training example of a fine-tuning input file for chat models using the dpo
  method".)

Each validator returns a list of problems (empty when the record is valid). The test suite
checks the same records against a JSON Schema with ``jsonschema`` as an independent check.
"""

from __future__ import annotations

from typing import Any

__all__ = ["validate_chat_example", "validate_jsonl", "validate_preference_example"]

_ROLES = {"system", "developer", "user", "assistant", "tool"}
_CHAT_KEYS = {"messages", "tools", "parallel_tool_calls"}
_INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}
_PREF_KEYS = {"input", "preferred_output", "non_preferred_output"}


def _message(m: Any, where: str) -> list[str]:
    if not isinstance(m, dict):
        return [f"{where}: a message must be an object"]
    errs = []
    role = m.get("role")
    if role not in _ROLES:
        errs.append(f"{where}: role must be one of {sorted(_ROLES)}, got {role!r}")
    content = m.get("content")
    if not isinstance(content, str) or not content.strip():
        errs.append(f"{where}: content must be a non-empty string")
    extra = set(m) - {"role", "content", "name", "weight"}
    if extra:
        errs.append(f"{where}: unexpected keys {sorted(extra)}")
    if "weight" in m and (role != "assistant" or m["weight"] not in (0, 1)):
        errs.append(f"{where}: weight is 0 or 1, on assistant messages only")
    return errs


def validate_chat_example(obj: Any) -> list[str]:
    """Problems with one supervised fine-tuning line (``{"messages": [...]}``)."""
    if not isinstance(obj, dict):
        return ["a line must be a JSON object"]
    errs = [f"unexpected top-level key {k!r}" for k in sorted(set(obj) - _CHAT_KEYS)]
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return errs + ["messages must be a non-empty list"]
    for i, m in enumerate(msgs):
        errs += _message(m, f"messages[{i}]")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
        errs.append("at least one assistant message is required")
    return errs


def _output(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 1:
        return [f"{key} must be a list of exactly one assistant message"]
    errs = _message(value[0], f"{key}[0]")
    if isinstance(value[0], dict) and value[0].get("role") != "assistant":
        errs.append(f"{key}[0]: role must be 'assistant'")
    return errs


def validate_preference_example(obj: Any) -> list[str]:
    """Problems with one preference (DPO) fine-tuning line."""
    if not isinstance(obj, dict):
        return ["a line must be a JSON object"]
    errs = [f"unexpected top-level key {k!r}" for k in sorted(set(obj) - _PREF_KEYS)]
    inp = obj.get("input")
    if not isinstance(inp, dict):
        errs.append("input must be an object with messages")
    else:
        errs += [f"unexpected key input.{k}" for k in sorted(set(inp) - _INPUT_KEYS)]
        msgs = inp.get("messages")
        if not isinstance(msgs, list) or not msgs:
            errs.append("input.messages must be a non-empty list")
        else:
            for i, m in enumerate(msgs):
                errs += _message(m, f"input.messages[{i}]")
            if isinstance(msgs[-1], dict) and msgs[-1].get("role") != "user":
                errs.append("input.messages must end with the user turn being answered")
    errs += _output(obj.get("preferred_output"), "preferred_output")
    errs += _output(obj.get("non_preferred_output"), "non_preferred_output")
    return errs


def validate_jsonl(path: str, kind: str) -> list[str]:
    """Problems of every line of a file, prefixed with the line number; ``kind`` chat|preference."""
    import json

    check = validate_chat_example if kind == "chat" else validate_preference_example
    errs: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except ValueError as e:
                errs.append(f"line {n}: not JSON ({e})")
                continue
            errs += [f"line {n}: {e}" for e in check(obj)]
    return errs
