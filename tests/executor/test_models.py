"""Model parity with transformers (fp32) through the runner, and checkpoint errors."""
import json
import shutil

import pytest
import torch
from checkpoints import load_hf_model, make_checkpoint

from bench.step_plans import SimpleDriver, make_plan, new_request, running
from executor.settings import RunnerSettings, build_runner
from executor.errors import CheckpointError
from executor.models import load_model, loader

BLOCK_SIZE = 4
ARCH_FIXTURES = ["llama_dir", "mistral_dir", "qwen2_dir", "qwen3_dir"]


def tokens(seed: int, n: int, vocab: int = 512) -> list[int]:
    return torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_next_logits(hf, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([token_ids])).logits[0, -1].float()


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("fixture", ARCH_FIXTURES)
def test_mixed_step_logits_match_transformers(fixture, request):
    """One step: 3 prefills (crossing blocks; one on a prefix cached by an earlier step) + 5 decodes.
    The earlier step's donor chunk samples nothing, so its last layer only writes K/V (that
    layer computes the logits rows alone): "c" reads them."""
    model_dir = request.getfixturevalue(fixture)
    runner = build_runner(RunnerSettings(model_dir, dtype="float32", num_device_blocks=64, block_size=BLOCK_SIZE))
    hf = load_hf_model(model_dir)
    decode_prompts = {f"d{i}": tokens(i, 3 + 4 * i) for i in range(5)}   # 3, 7, 11, 15, 19 tokens
    donor = tokens(10, 8)                                                 # two full blocks
    first = [new_request(rid, p, list(range(5 * i, 5 * i + 5))) for i, (rid, p) in enumerate(decode_prompts.items())]
    first.append(new_request("donor", donor + [7], [30, 31, 32], num_scheduled_tokens=8))
    out = runner.step(make_plan(1, first))
    known = {rid: p + [t] for rid, p, t in zip(decode_prompts, decode_prompts.values(),
                                                [s.token_id for s in out.result.sampled])}
    assert out.sampled_request_ids == list(decode_prompts)

    prompt_a, prompt_b, prompt_c = tokens(20, 11), tokens(21, 6), donor + tokens(22, 5)
    second_new = [new_request("a", prompt_a, [40, 41, 42]), new_request("b", prompt_b, [43, 44]),
                  # Reuses the donor's two blocks: only its last 5 tokens are computed here.
                  new_request("c", prompt_c, [30, 31, 45, 46], num_computed_tokens=8)]
    second_run = [running(rid, len(known[rid]) - 1) for rid in decode_prompts]
    out = runner.step(make_plan(2, second_new, second_run, finished=["donor"]))
    known |= {"a": prompt_a, "b": prompt_b, "c": prompt_c}
    assert sorted(out.sampled_request_ids) == sorted(known)
    for row, rid in enumerate(out.sampled_request_ids):
        assert_close(out.logits[row], hf_next_logits(hf, known[rid]))


@pytest.mark.parametrize("fixture", ARCH_FIXTURES)
def test_greedy_48_tokens_match_generate(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    runner = build_runner(RunnerSettings(model_dir, dtype="float32", num_device_blocks=128, block_size=BLOCK_SIZE))
    hf = load_hf_model(model_dir)
    prompts = {"x": tokens(3, 5), "y": tokens(2, 13)}  # tokens(1, 5) hits a one-token loop on qwen3
    driver = SimpleDriver(BLOCK_SIZE)
    for rid, prompt in prompts.items():
        driver.add(rid, prompt)
    for _ in range(48):
        driver.apply(runner.step(driver.plan()).result)
    for rid, prompt in prompts.items():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=48, min_new_tokens=48,
                               do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):]
        assert driver.outputs[rid] == expected.tolist()
        assert len(set(driver.outputs[rid])) > 8  # random weights still give a varied greedy stream


def test_llama3_rope_scaling_matches_transformers(tmp_path, tokenizer_dir):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    model_dir = make_checkpoint(tmp_path / "llama3", "llama", tokenizer_dir=tokenizer_dir, rope_scaling=rope)
    saved = json.loads((model_dir / "config.json").read_text())
    assert (saved.get("rope_parameters") or saved["rope_scaling"])["rope_type"] == "llama3"
    runner = build_runner(RunnerSettings(model_dir, dtype="float32", num_device_blocks=64, block_size=BLOCK_SIZE))
    prompt = tokens(3, 90)
    out = runner.step(make_plan(1, [new_request("r", prompt, list(range(23)))]))
    assert_close(out.logits[0], hf_next_logits(load_hf_model(model_dir), prompt))


@pytest.mark.parametrize("flags, expected", [([], torch.float32), (["avx512_bf16"], torch.bfloat16),
                                              (["amx_bf16", "avx512_bf16"], torch.bfloat16)])
def test_auto_dtype_on_a_cpu_follows_its_bf16_flags_not_the_checkpoint(tmp_path, tokenizer_dir, monkeypatch,
                                                                         flags, expected):
    """bf16 where the CPU has AMX-BF16 or AVX512-BF16 (fast there), fp32 where bf16 is emulated;
    an explicit --dtype wins either way."""
    monkeypatch.setattr(loader, "bf16_flags", lambda: flags)
    model_dir = make_checkpoint(tmp_path / "bf16", "qwen2", tokenizer_dir=tokenizer_dir, dtype=torch.bfloat16)
    loaded = load_model(model_dir, "auto", "cpu")
    assert loaded.config.torch_dtype == "bfloat16" and loaded.dtype == expected
    assert loaded.model.weights.layers[0].qkv.dtype == expected
    assert load_model(model_dir, "float32", "cpu").dtype == torch.float32


def test_sharded_checkpoint_loads_like_single_file(tmp_path, llama_dir):
    hf = load_hf_model(llama_dir)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    shutil.copyfile(llama_dir / "tokenizer.json", tmp_path / "sharded" / "tokenizer.json")
    single, sharded = load_model(llama_dir), load_model(tmp_path / "sharded")
    assert torch.equal(single.model.weights.layers[1].gate_up, sharded.model.weights.layers[1].gate_up)


def copy_checkpoint(source, target):
    shutil.copytree(source, target)
    return target


def edit_config(model_dir, **changes):
    config = json.loads((model_dir / "config.json").read_text())
    config.update(changes)
    (model_dir / "config.json").write_text(json.dumps(config))


def test_unsupported_architecture_is_named(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "m")
    edit_config(model_dir, architectures=["GPT2LMHeadModel"])
    with pytest.raises(CheckpointError, match=r"unsupported architecture \['GPT2LMHeadModel'\].*LlamaForCausalLM"):
        load_model(model_dir)


def test_unsupported_rope_type_is_named(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "m")
    edit_config(model_dir, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(CheckpointError, match="rope type 'yarn' is not supported"):
        load_model(model_dir)


def test_missing_config_and_weights_are_named(tmp_path, llama_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    model_dir = copy_checkpoint(llama_dir, tmp_path / "m")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights"):
        load_model(model_dir)
    (model_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_model(model_dir)


def test_missing_tensor_and_wrong_shape_are_named(tmp_path, llama_dir):
    from safetensors.torch import load_file, save_file

    model_dir = copy_checkpoint(llama_dir, tmp_path / "m")
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(model_dir)
    edit_config(model_dir, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \[128, 64\].*\[96, 64\]"):
        load_model(model_dir)


def test_sliding_window_caps_max_model_len(tmp_path, mistral_dir):
    model_dir = copy_checkpoint(mistral_dir, tmp_path / "m")
    edit_config(model_dir, sliding_window=256)
    assert load_model(model_dir).config.max_model_len == 256
