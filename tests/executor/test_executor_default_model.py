"""The built-in random model: built once, atomically, loadable, honest about being random."""
import json

from executor.default_model import NAME, ensure_default_model
from executor.models import load_model, model_id
from executor.tokenizer_training import train_tokenizer


def test_default_model_is_built_once_and_loads(tmp_path):
    path = ensure_default_model(tmp_path)
    assert path == tmp_path / "models" / NAME
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model(tmp_path) == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "models").iterdir()] == [NAME]  # no staging dir left behind
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 4096
    assert "random" in (path / "README.md").read_text().lower()
    loaded = load_model(path)
    assert (loaded.config.num_layers, loaded.config.hidden_size, loaded.config.eos_token_ids) == (4, 256, [0])
    assert loaded.model_id == model_id(path)


def test_tokenizer_training_is_deterministic(tmp_path):
    first = train_tokenizer(tmp_path / "a", vocab_size=300, num_corpus_bytes=200_000)
    second = train_tokenizer(tmp_path / "b", vocab_size=300, num_corpus_bytes=200_000)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    assert json.loads((first / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
