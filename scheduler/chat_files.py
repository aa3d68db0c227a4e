"""What a chat client needs from the model directory: its chat template and special tokens.

The scheduler reads them once (it already reads tokenizer.json from the same directory) and
serves them in ModelInfo, so an HTTP gateway on another host renders chats without the files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


class ChatFiles(NamedTuple):
    chat_template: str   # "" when the model has none
    bos_token: str
    eos_token: str


def read_chat_files(model_dir: str | Path) -> ChatFiles:
    """tokenizer_config.json's `chat_template` (a string, or the "default" of a named list),
    else chat_template.jinja beside it; missing or unreadable files give empty strings."""
    directory = Path(model_dir)
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    template = _named_default(config.get("chat_template"))
    jinja_file = directory / "chat_template.jinja"
    if not template and jinja_file.is_file():
        template = jinja_file.read_text()
    return ChatFiles(template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))


def _named_default(template) -> str:
    if isinstance(template, list):   # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {item.get("name"): item.get("template", "") for item in template if isinstance(item, dict)}
        return named.get("default", "")
    return template if isinstance(template, str) else ""


def _token_text(token) -> str:
    if isinstance(token, dict):   # an AddedToken: {"content": "<s>", ...}
        token = token.get("content")
    return token if isinstance(token, str) else ""
