"""add_special_tokens on Generate and the Detokenize pieces, with a tokenizer that adds BOS (as
Llama's does): a chat rendered with BOS is sent with add_special_tokens=false, and must then
start with exactly one BOS."""
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from protos.v1 import generation_pb2
from scheduler.validation import ModelLimits, prompt_token_ids

VOCAB = {"<s>": 0, "hello": 1, "world": 2, "[UNK]": 3}
LIMITS = ModelLimits(vocab_size=4, max_model_len=64, block_size=16, num_blocks=8)


def bos_adding_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<s>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tokenizer


def test_text_gets_the_tokenizers_bos_unless_add_special_tokens_is_false():
    tokenizer = bos_adding_tokenizer()
    default = generation_pb2.GenerateRequest(text="hello world")
    assert prompt_token_ids(default, tokenizer, LIMITS) == [0, 1, 2]
    rendered = generation_pb2.GenerateRequest(text="<s>hello world", add_special_tokens=False)
    assert prompt_token_ids(rendered, tokenizer, LIMITS) == [0, 1, 2]
    doubled = generation_pb2.GenerateRequest(text="<s>hello world")
    assert prompt_token_ids(doubled, tokenizer, LIMITS) == [0, 0, 1, 2]   # what the flag prevents
