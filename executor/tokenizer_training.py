"""Train a small byte-level BPE tokenizer offline, on Python's own stdlib sources.

Used by the built-in default model and by the test checkpoints: no download, deterministic
(sorted files, bounded bytes), about a second for ~1.5 MB of text.
"""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
DEFAULT_CORPUS_BYTES = 1_500_000


def stdlib_corpus(num_bytes: int = DEFAULT_CORPUS_BYTES) -> list[str]:
    """The first `num_bytes` of the stdlib's *.py files, in sorted path order (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    num_read = 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if num_read >= num_bytes:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = text[: num_bytes - num_read]
        texts.append(text)
        num_read += len(text)
    if not texts:
        raise RuntimeError(f"no Python sources found under {root} to train a tokenizer on")
    return texts


def train_tokenizer(out_dir: str | Path, vocab_size: int = 512,
                    num_corpus_bytes: int = DEFAULT_CORPUS_BYTES) -> Path:
    """Train and save tokenizer.json + tokenizer_config.json into out_dir; return out_dir.

    The EOS token `<|endoftext|>` gets id 0. Same inputs give the same file, byte for byte.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(stdlib_corpus(num_corpus_bytes), trainer=trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN,
              "bos_token": None, "pad_token": None, "model_max_length": 1_000_000,
              "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def eos_token_id(tokenizer_dir: str | Path) -> int:
    """Id of the EOS token in a tokenizer trained by train_tokenizer."""
    from tokenizers import Tokenizer

    token_id = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).token_to_id(EOS_TOKEN)
    if token_id is None:
        raise ValueError(f"{tokenizer_dir}/tokenizer.json has no {EOS_TOKEN} token")
    return token_id


def vocab_size_of(tokenizer_dir: str | Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).get_vocab_size()
