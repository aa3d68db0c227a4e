"""OpenAI request bodies -> the exact GenerateRequests the gateway sends (one per choice)."""
import pytest

from protos.v1 import common_pb2, generation_pb2
from strata.gateway import mapping
from strata.gateway.errors import ApiError
from strata.gateway.schemas import ChatCompletionRequest, CompletionRequest


def completion(**fields):
    return CompletionRequest(**dict({"prompt": "hi"}, **fields))


def chat(**fields):
    return ChatCompletionRequest(**dict({"messages": [{"role": "user", "content": "hi"}]}, **fields))


def test_every_sampling_and_stopping_field_maps_to_its_proto_field():
    body = completion(temperature=0.5, top_p=0.9, top_k=7, min_p=0.1, presence_penalty=0.5,
                      frequency_penalty=-0.5, repetition_penalty=1.2, seed=11, stop="\n\n",
                      stop_token_ids=[3, 4], ignore_eos=True, min_tokens=2, max_tokens=9,
                      priority=5, cache_salt="s")
    [request] = mapping.generate_requests(body, mapping.completion_prompts(body)[0],
                                          mapping.completion_max_tokens(body), 2)
    expected = generation_pb2.GenerateRequest(
        text="hi", add_special_tokens=True, priority=-5, cache_salt="s",
        sampling=common_pb2.SamplingParams(temperature=0.5, top_p=0.9, top_k=7, min_p=0.1, seed=11,
                                           repetition_penalty=1.2, presence_penalty=0.5,
                                           frequency_penalty=-0.5, logprobs=2),
        stopping=generation_pb2.StoppingCriteria(max_tokens=9, min_tokens=2, stop=["\n\n"],
                                                 stop_token_ids=[3, 4], ignore_eos=True))
    assert request == expected


def test_unset_fields_stay_unset_so_the_scheduler_defaults_apply():
    body = completion()
    [request] = mapping.generate_requests(body, mapping.completion_prompts(body)[0], 16, None)
    assert not request.sampling.HasField("temperature") and not request.sampling.HasField("top_p")
    assert not request.sampling.HasField("seed") and not request.sampling.HasField("logprobs")
    assert (request.sampling.top_k, request.priority, request.stopping.max_tokens) == (0, 0, 16)


def test_vllms_top_k_minus_one_is_off_and_lower_priority_runs_first():
    body = completion(top_k=-1, priority=-3)
    [request] = mapping.generate_requests(body, mapping.Prompt(text="x"), 4, None)
    assert (request.sampling.top_k, request.priority) == (0, 3)


def test_n_choices_get_seed_plus_i_or_no_seed():
    seeded = completion(n=3, seed=41)
    requests = mapping.generate_requests(seeded, mapping.Prompt(text="x"), 4, None)
    assert [r.sampling.seed for r in requests] == [41, 42, 43]
    unseeded = mapping.generate_requests(completion(n=2), mapping.Prompt(text="x"), 4, None)
    assert [r.sampling.HasField("seed") for r in unseeded] == [False, False]


@pytest.mark.parametrize("prompt, expected", [
    ("a", [mapping.Prompt(text="a")]),
    (["a", "b"], [mapping.Prompt(text="a"), mapping.Prompt(text="b")]),
    ([5, 6], [mapping.Prompt(token_ids=[5, 6])]),
    ([[5], [6, 7]], [mapping.Prompt(token_ids=[5]), mapping.Prompt(token_ids=[6, 7])]),
])
def test_a_prompt_is_a_text_texts_token_ids_or_lists_of_them(prompt, expected):
    assert mapping.completion_prompts(completion(prompt=prompt)) == expected


def test_token_ids_go_as_tokens_and_add_special_tokens_false_goes_with_text():
    [by_ids] = mapping.generate_requests(completion(), mapping.Prompt(token_ids=[1, 2]), 4, None)
    assert (by_ids.WhichOneof("input"), list(by_ids.tokens.ids)) == ("tokens", [1, 2])
    assert not by_ids.HasField("add_special_tokens")
    body = completion(add_special_tokens=False)
    [by_text] = mapping.generate_requests(body, mapping.completion_prompts(body)[0], 4, None)
    assert (by_text.text, by_text.add_special_tokens) == ("hi", False)


def test_an_empty_prompt_list_is_a_400_naming_prompt():
    with pytest.raises(ApiError) as raised:
        mapping.completion_prompts(completion(prompt=[]))
    assert (raised.value.status, raised.value.param) == (400, "prompt")


def test_chat_max_tokens_prefers_max_completion_tokens_then_max_tokens_then_the_model_length():
    assert mapping.chat_max_tokens(chat(max_completion_tokens=5, max_tokens=9), 10, 100) == 5
    assert mapping.chat_max_tokens(chat(max_tokens=9), 10, 100) == 9
    assert mapping.chat_max_tokens(chat(), 10, 100) == 90
    assert mapping.completion_max_tokens(completion()) == 16


def test_chat_logprobs_and_top_logprobs():
    assert mapping.chat_logprobs(chat()) is None
    assert mapping.chat_logprobs(chat(logprobs=True)) == 0
    assert mapping.chat_logprobs(chat(logprobs=True, top_logprobs=3)) == 3
    with pytest.raises(ApiError) as raised:
        mapping.chat_logprobs(chat(top_logprobs=3))
    assert (raised.value.status, raised.value.param) == (400, "top_logprobs")
