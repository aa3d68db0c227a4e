"""Chat messages -> prompt text with the model's Jinja chat template, as transformers'
apply_chat_template renders it: a sandboxed environment (a template is model data, not code we
trust), trim_blocks/lstrip_blocks, `raise_exception`, `tojson` and `strftime_now`."""
from __future__ import annotations

import json
from datetime import datetime
from typing import NamedTuple

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from strata.gateway.errors import bad_request


class RenderedChat(NamedTuple):
    text: str
    # False when the text already starts with BOS: the tokenizer must not add it a second time.
    is_special_added: bool


def raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def make_environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment


class ChatTemplate:
    """One model's template, compiled once. `source` "" means the model has none."""

    def __init__(self, source: str, bos_token: str, eos_token: str):
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.template = make_environment().from_string(source) if source else None

    def render(self, messages: list[dict], add_generation_prompt: bool) -> RenderedChat:
        """Raises ApiError 400 when the model has no template or the template refuses the chat."""
        if self.template is None:
            raise bad_request("this model has no chat template (no `chat_template` in its "
                              "tokenizer_config.json, no chat_template.jinja): use /v1/completions",
                              "messages", "chat_template_missing")
        try:
            text = self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except jinja2.exceptions.TemplateError as error:
            raise bad_request(f"the chat template refused these messages: {error}", "messages") from error
        is_bos_rendered = bool(self.bos_token) and text.startswith(self.bos_token)
        return RenderedChat(text, not is_bos_rendered)


def message_text(content, index: int) -> str:
    """A message's content as text: a string, a list of text parts, or None (an empty turn)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"messages[{index}].content: only text parts are supported, got "
                              f"type {part.get('type')!r}", f"messages[{index}].content")
        texts.append(part["text"])
    return "".join(texts)


def template_messages(messages: list) -> list[dict]:
    """The request's messages as the template reads them: role and text content (plus any other
    field the client sent, e.g. `name`)."""
    return [dict(message, content=message_text(message.get("content"), index))
            for index, message in enumerate(messages)]
