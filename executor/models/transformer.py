"""One decoder-only transformer covering Llama, Mistral, Qwen2 and Qwen3.

The four differ only in switches read from config.json: q/k/v bias (Qwen2), per-head q/k
RMSNorm and an explicit head_dim (Qwen3), tied embeddings, Llama 3 rope scaling. The forward
runs over one flat varlen batch and reads/writes K/V through the paged kernels.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import native_ops, paged_attention, write_kv

from executor.models.config import ModelConfig, llama3_inv_freq_factors
from executor.models.weights import LayerWeights, ModelWeights

# Decode steps of a few sequences: the native small-M kernel (kernels/csrc/small_linear_cpu.cpp)
# streams each weight once, where MKL's sgemm at 2..48 rows runs at a half to a third of memory
# speed. One row is MKL's gemv (already at memory speed), more rows its gemm (compute-bound).
SMALL_LINEAR_ROWS = range(2, 49)
# With the weights packed once for MKL (kernels/csrc/packed_linear_cpu.cpp) the gemm wins from
# about 20 rows (1 thread, the 124M Llama's layer matrices, cold: M=16 60 vs 64 ms, M=24 68 vs
# 64, M=32 89 vs 76, M=48 111 vs 92).
SMALL_LINEAR_ROWS_WITH_PACKED = range(2, 21)
# Compute dtypes of the fused norm / SiLU / RoPE kernels.
NATIVE_DTYPES = (torch.float32, torch.bfloat16)
# oneDNN's linear compiles a kernel per row count (4-8 ms the first time, here), and a server's
# steps bring hundreds of distinct counts: past ONEDNN_EXACT_ROWS, rows are padded up to a multiple
# of ONEDNN_ROW_MULTIPLE (at most 28 more shapes a weight up to 512 rows). Measured on the
# 4096 x 768 gate_up, bf16, 2 threads, Xeon with AMX, padded / exact time once both are compiled:
# 100 rows 0.87, 130 0.94, 200 0.70, 300 0.93, 450 1.08 (16-row AMX tiles); 20-75 rows 1.08-1.25,
# so the few small counts stay exact.
ONEDNN_EXACT_ROWS = 64
ONEDNN_ROW_MULTIPLE = 16


class BatchInputs(NamedTuple):
    """One step's flat batch (T tokens over S sequences), all on the model's device."""
    input_ids: Tensor        # int64 [T]
    positions: Tensor        # int64 [T]
    slot_mapping: Tensor     # int64 [T]: block_id * block_size + offset
    block_tables: Tensor     # int32 [S, max_blocks]
    seq_lens: Tensor         # int32 [S]: context length including this step's tokens
    query_start_loc: Tensor  # int32 [S + 1]
    logits_indices: Tensor   # int64 [N]: rows of the batch whose next-token logits are wanted
    # int32 [S + 1]: query_start_loc when the logits rows (each the last row of its sequence)
    # are the only queries: what the last layer computes attention for
    logits_query_start_loc: Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Same order of operations as transformers (normalise in fp32, then scale) for parity.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_tables(config: ModelConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos, sin [max_model_len, head_dim] in fp32 (first half repeated, rotate-half layout)."""
    rope, dim = config.rope, config.head_dim
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope.rope_type == "llama3":
        inv_freq = llama3_inv_freq_factors(rope, inv_freq)
    positions = torch.arange(config.max_model_len, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [T, heads, D]; cos/sin [T, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class CausalLM:
    """Stateless forward over a flat batch; the KV state lives in the pool passed in."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, device: torch.device):
        self.config, self.weights, self.device = config, weights, device
        self.cos, self.sin = rope_tables(config, device)
        self.scale = config.head_dim ** -0.5
        # The fused C++ layers (kernels/csrc/cpu_ops.cpp) for the fp32 or bf16 CPU forward, else None.
        dtype = weights.embed.dtype
        self.ops = native_ops() if device.type == "cpu" and dtype in NATIVE_DTYPES else None
        # weight.data_ptr() -> the weight in oneDNN's blocked layout, made once (F.linear reorders
        # a bf16 weight on every call). bf16: 1.2-1.3x at 64 rows, 1.5-2.5x at 1-16 rows,
        # 1.02-1.1x at 512. fp32: 2.2-3.9x MKL's packed sgemm at 16-512 rows, 1.5-2.5x MKL's gemv
        # at one row, 1.3-3.4x the native small-M kernel at 2-16 rows (one shape even) (the 100M Llama's matrices, 2 threads,
        # AVX512-BF16 EPYC; `python -m bench.kernels`).
        self.onednn_packed = {}
        if device.type == "cpu" and dtype in NATIVE_DTYPES and (reorder := onednn_reorder(dtype)) is not None:
            self.onednn_packed = {weight.data_ptr(): reorder(weight) for weight in _projections(weights)}
        # Without oneDNN (a torch built without it), fp32 projections use the native small-M
        # kernel and MKL's packed sgemm, bf16 ones F.linear.
        is_native_fp32 = self.ops is not None and dtype == torch.float32 and not self.onednn_packed
        self.is_small_linear = is_native_fp32 and self.ops.small_linear_is_fast()
        # weight.data_ptr() -> the weight packed for MKL's sgemm; empty where there is no MKL.
        self.packed = {}
        if is_native_fp32 and self.ops.packed_linear_is_available():
            self.packed = {weight.data_ptr(): self.ops.pack_linear_weight(weight)
                           for weight in _projections(weights)}
        self.small_linear_rows = SMALL_LINEAR_ROWS_WITH_PACKED if self.packed else SMALL_LINEAR_ROWS

    @torch.inference_mode()
    def hidden_states(self, batch: BatchInputs, kv_pool: Tensor) -> Tensor:
        """Run every layer; return the final-normed hidden states of the logits_indices rows."""
        x = self.weights.embed[batch.input_ids]
        cos = self.cos[batch.positions].to(x.dtype)   # [T, head_dim]
        sin = self.sin[batch.positions].to(x.dtype)
        # Past the last layer's K/V only the logits rows matter: that layer's attention, o_proj
        # and MLP run for them alone (in a prefill chunk, one row of hundreds).
        num_layers = len(self.weights.layers)
        for index, layer in enumerate(self.weights.layers):
            output_rows = batch.logits_indices if index == num_layers - 1 else None
            x = self._layer(layer, x, cos, sin, batch, kv_pool[:, index], output_rows)
        return self._norm(x, self.weights.final_norm)

    @torch.inference_mode()
    def logits(self, batch: BatchInputs, kv_pool: Tensor) -> Tensor:
        """fp32 logits [N, vocab] for the batch's logits_indices rows (no other row is projected)."""
        hidden = self.hidden_states(batch, kv_pool)
        return self._linear(hidden, self.weights.lm_head).float()

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ weight.T + bias: oneDNN's linear on the reordered weight, else the small-M kernel
        for a few rows, else MKL's packed gemm, else F.linear."""
        if (packed := self.onednn_packed.get(weight.data_ptr())) is not None:
            rows = x.shape[0]
            padded = -(-rows // ONEDNN_ROW_MULTIPLE) * ONEDNN_ROW_MULTIPLE
            if padded == rows or rows <= ONEDNN_EXACT_ROWS:
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")
            rows_in = x.new_empty((padded, x.shape[1]))   # rows past x's: never read back
            rows_in[:rows] = x
            return torch.ops.mkldnn._linear_pointwise(rows_in, packed, bias, "none", [], "")[:rows]
        if self.is_small_linear and x.shape[0] in self.small_linear_rows and weight.is_contiguous():
            out = self.ops.small_linear(x, weight)
        elif x.shape[0] > 1 and (packed := self.packed.get(weight.data_ptr())) is not None \
                and x.stride(-1) == 1:   # one row: MKL's gemv is faster than the packed gemm
            out = self.ops.packed_linear(x, packed)
        else:
            return F.linear(x, weight, bias)
        return out if bias is None else out.add_(bias)

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """RMSNorm of [T, H] rows: the fused kernel when there is one."""
        if self.ops is None:
            return rms_norm(x, weight, self.config.rms_norm_eps)
        return self.ops.rms_norm(x, weight, self.config.rms_norm_eps)

    def _layer(self, layer: LayerWeights, x: Tensor, cos: Tensor, sin: Tensor,
               batch: BatchInputs, layer_cache: Tensor, output_rows: Tensor | None) -> Tensor:
        """One decoder layer: K/V of every row written; the output rows of x (None: all) out."""
        config, ops = self.config, self.ops
        num_tokens, head_dim, eps = x.shape[0], config.head_dim, config.rms_norm_eps
        h = self._norm(x, layer.input_norm)
        qkv = self._linear(h, layer.qkv, layer.qkv_bias)
        is_fused_rope = ops is not None and layer.q_norm is None
        if is_fused_rope:   # rotates the q and k heads inside qkv
            ops.rope_inplace(qkv, cos, sin, config.num_heads + config.num_kv_heads, head_dim)
        q_size, kv_size = config.num_heads * head_dim, config.num_kv_heads * head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(num_tokens, config.num_heads, head_dim)
        k = k.view(num_tokens, config.num_kv_heads, head_dim)
        v = v.view(num_tokens, config.num_kv_heads, head_dim)
        if not is_fused_rope:
            if layer.q_norm is not None:
                q = rms_norm(q, layer.q_norm, eps)
                k = rms_norm(k, layer.k_norm, eps)
            q, k = apply_rope(q, cos[:, None], sin[:, None]), apply_rope(k, cos[:, None], sin[:, None])
        write_kv(layer_cache, k, v, batch.slot_mapping)
        query_start_loc = batch.query_start_loc
        if output_rows is not None:
            q, x, query_start_loc = q[output_rows], x[output_rows], batch.logits_query_start_loc
            num_tokens = x.shape[0]
        attn = paged_attention(q, layer_cache, batch.block_tables, batch.seq_lens,
                               query_start_loc, self.scale)
        attn_out = self._linear(attn.reshape(num_tokens, q_size), layer.o_proj, layer.o_bias)
        if ops is None:
            x = x + attn_out
            h = rms_norm(x, layer.post_norm, eps)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            return x + F.linear(F.silu(gate) * up, layer.down)
        h = ops.add_rms_norm(x, attn_out, layer.post_norm, eps)   # x += attn_out
        return x.add_(self._linear(ops.silu_and_mul(self._linear(h, layer.gate_up)), layer.down))


def onednn_reorder(dtype: torch.dtype = torch.bfloat16):
    """torch's op that reorders a [N, K] weight of `dtype` for oneDNN's linear, or None where this
    torch has no oneDNN (or not that op: it is internal to torch's inductor)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        reorder = torch.ops.mkldnn._reorder_linear_weight
        probe = torch.ones(4, 8, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(probe[:2].contiguous(), reorder(probe, None), None, "none", [], "")
        return reorder if torch.equal(out, F.linear(probe[:2], probe)) else None
    except (AttributeError, RuntimeError):
        return None


def _projections(weights: ModelWeights) -> list[Tensor]:
    """Every weight the forward multiplies by (lm_head too, also when it is the embedding)."""
    return [weight for layer in weights.layers
            for weight in (layer.qkv, layer.o_proj, layer.gate_up, layer.down)] + [weights.lm_head]
