"""Chat templates rendered as transformers renders them, in a sandbox, with BOS detection."""
import json

import pytest

from executor.default_model import CHAT_TEMPLATE
from scheduler.chat_files import read_chat_files
from strata.gateway.chat_template import ChatTemplate, RenderedChat, template_messages
from strata.gateway.errors import ApiError

LLAMA_LIKE = ("{{ bos_token }}{% for message in messages %}\n"
              "    [{{ message['role'] }}] {{ message['content'] }}\n"
              "{% endfor %}\n"
              "{% if add_generation_prompt %}[assistant]{% endif %}")


def test_the_built_in_models_template_renders_roles_contents_and_the_generation_prompt():
    template = ChatTemplate(CHAT_TEMPLATE, "", "<|endoftext|>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert template.render(messages, add_generation_prompt=True) == RenderedChat(
        "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n<|assistant|>\n", True)
    assert template.render(messages, add_generation_prompt=False).text.endswith("Hi<|endoftext|>\n")


def test_trim_and_lstrip_blocks_and_a_rendered_bos_turns_special_tokens_off():
    rendered = ChatTemplate(LLAMA_LIKE, "<s>", "</s>").render([{"role": "user", "content": "Hi"}], True)
    assert rendered == RenderedChat("<s>    [user] Hi\n[assistant]", False)


def test_a_template_without_bos_keeps_the_tokenizers_special_tokens():
    rendered = ChatTemplate("{{ messages[0]['content'] }}", "<s>", "</s>").render(
        [{"role": "user", "content": "Hi"}], True)
    assert rendered == RenderedChat("Hi", True)


def test_raise_exception_in_the_template_is_a_400_with_its_message():
    template = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}"
                            "{% endif %}", "", "")
    with pytest.raises(ApiError) as raised:
        template.render([{"role": "assistant", "content": "x"}], True)
    assert raised.value.status == 400
    assert raised.value.message == "the chat template refused these messages: user first"


def test_the_sandbox_refuses_a_template_that_reaches_for_python_internals():
    template = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "", "")
    with pytest.raises(ApiError) as raised:
        template.render([{"role": "user", "content": "x"}], True)
    assert raised.value.status == 400


def test_a_model_without_a_template_is_a_clear_400():
    with pytest.raises(ApiError) as raised:
        ChatTemplate("", "", "").render([{"role": "user", "content": "x"}], True)
    assert (raised.value.status, raised.value.code) == (400, "chat_template_missing")
    assert "no chat template" in raised.value.message


def test_tojson_and_text_parts():
    template = ChatTemplate("{{ messages | tojson }}", "", "")
    messages = template_messages([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                               {"type": "text", "text": "é"}]}])
    assert template.render(messages, True).text == '[{"role": "user", "content": "aé"}]'
    with pytest.raises(ApiError) as raised:
        template_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    assert raised.value.param == "messages[0].content"


def test_the_scheduler_reads_the_template_from_tokenizer_config_or_chat_template_jinja(tmp_path):
    config = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
              "bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert tuple(read_chat_files(tmp_path)) == ("D", "<s>", "</s>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (tmp_path / "chat_template.jinja").write_text("J")
    assert tuple(read_chat_files(tmp_path)) == ("J", "", "</s>")
    assert tuple(read_chat_files(tmp_path / "missing")) == ("", "", "")


def test_the_built_in_model_ships_its_template_where_the_scheduler_reads_it(tmp_path):
    from executor.default_model import write_chat_template

    write_chat_template(tmp_path)
    assert read_chat_files(tmp_path).chat_template == CHAT_TEMPLATE
