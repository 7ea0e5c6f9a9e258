"""Meta's OPT decoder (all sizes, 125m to 175b) in flax.nnx, with an explicit KV cache.

Two call styles share one decoder:
- ``model(input_ids, attention_mask)`` -> logits (B, T, V) float32, a plain forward equal to
  HuggingFace transformers' ``OPTForCausalLM`` on the same checkpoint;
- ``model.decode(input_ids, cache, index, token_valid)`` -> (hidden, cache), which writes the new keys and
  values into cache slots [index, index + T) and attends over the whole cache; generation is built on it.

Every projection is an ``nnx.Linear`` so that ``jax_flashllm.nn.sparsify`` can swap any of them for a
``SparseLinear``; the embeddings and the LM head (tied to the token embedding) stay dense.

Einsum letters: B batch, T query tokens, S key slots, H heads, D head dim, M hidden, V vocab.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jax_flashllm.attention import attention, attention_over_heads
from jax_flashllm.nn import PackedEmbed

# OPT stores learned positions with two leading rows (a fairseq leftover): position p is row p + 2.
POSITION_OFFSET = 2
# The OPT tokenizer has 50265 entries; the embedding has 50272 rows (padded to a multiple of 8).
OPT_TOKENIZER_VOCAB = 50265

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "gelu_new": jax.nn.gelu, "silu": jax.nn.silu}

# (hidden, layers, heads, ffn) of the published checkpoints; opt-350m is the post-LayerNorm one.
_SIZES = {
    "opt-125m": (768, 12, 12, 3072),
    "opt-350m": (1024, 24, 16, 4096),
    "opt-1.3b": (2048, 24, 32, 8192),
    "opt-2.7b": (2560, 32, 32, 10240),
    "opt-6.7b": (4096, 32, 32, 16384),
    "opt-13b": (5120, 40, 40, 20480),
    "opt-30b": (7168, 48, 56, 28672),
    "opt-66b": (9216, 64, 72, 36864),
    "opt-175b": (12288, 96, 96, 49152),
}


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """OPT hyper-parameters, named as in HuggingFace's ``config.json``.

    ``sampling_vocab_size`` is the number of logits that sampling may pick (the tokenizer's real vocabulary);
    rows of the embedding beyond it are padding and are masked in ``jax_flashllm.generate``.
    """

    vocab_size: int = 50272
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    ffn_dim: int = 3072
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int = 768
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    activation_function: str = "relu"
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 2
    eos_token_id: int = 2
    sampling_vocab_size: int | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation_function {self.activation_function!r}; "
                             f"known: {sorted(_ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    @property
    def has_projections(self) -> bool:
        return self.word_embed_proj_dim != self.hidden_size

    @classmethod
    def names(cls) -> list[str]:
        return list(_SIZES)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "OPTConfig":
        """The config of a published size: "opt-125m" ... "opt-175b" ("facebook/" prefix allowed)."""
        key = name.split("/")[-1].lower()
        if key not in _SIZES:
            raise ValueError(f"unknown OPT size {name!r}; known: {', '.join(_SIZES)}")
        hidden, layers, heads, ffn = _SIZES[key]
        fields = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
                      word_embed_proj_dim=hidden, sampling_vocab_size=OPT_TOKENIZER_VOCAB)
        if key == "opt-350m":
            fields.update(word_embed_proj_dim=512, do_layer_norm_before=False)
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def tiny(cls, *, post_ln: bool = False, **overrides) -> "OPTConfig":
        """A 2-layer OPT (hidden 32, vocab 96) for tests and quick experiments; post_ln=True gives the
        opt-350m layout (post-LayerNorm, project_in/project_out of width 16, no final LayerNorm).

        Its random weights are larger than OPT's (init_std 0.2, not 0.02): at width 32, OPT's scale gives
        logits within ~0.1 of each other, and greedy tokens would hinge on rounding."""
        fields = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                      max_position_embeddings=64, word_embed_proj_dim=16 if post_ln else 32,
                      do_layer_norm_before=not post_ln, init_std=0.2)
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_dict(cls, d: dict) -> "OPTConfig":
        """From a HuggingFace config dict; unknown keys are ignored, ``_remove_final_layer_norm`` honoured."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in d.items() if k in known and v is not None}
        if "_remove_final_layer_norm" in d:
            fields["remove_final_layer_norm"] = bool(d["_remove_final_layer_norm"])
        fields.setdefault("word_embed_proj_dim", fields.get("hidden_size", cls.hidden_size))
        if "sampling_vocab_size" not in fields and fields.get("vocab_size") == 50272:
            fields["sampling_vocab_size"] = OPT_TOKENIZER_VOCAB
        return cls(**fields)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "OPTConfig":
        """From a HuggingFace ``config.json`` (a file, or a directory holding one)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"OPT config not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a JSON config file ({e}); pass a HuggingFace config.json or the "
                             "checkpoint directory holding it") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a config.json holds a JSON object, got {type(d).__name__}")
        if d.get("model_type", "opt") != "opt":
            raise ValueError(f"{path}: model_type is {d['model_type']!r}, not 'opt'")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "opt"
        d["_remove_final_layer_norm"] = d.pop("remove_final_layer_norm")
        return d


class KVCache(NamedTuple):
    """Keys and values of every layer, plus which slots hold a real (non-padding) token.

    k: tuple of num_layers arrays (B, H, D, S); v: tuple of (B, H, S, D); both in the model's
    ``compute_dtype``; valid: (B, S) bool. Keys are stored transposed so that both attention dots read the
    cache where it lies: with (B, S, H, D) XLA's CPU backend copied the whole cache into a transposed
    float32 buffer in every layer of every step (2-3x the attention time at 2048 slots, measured).
    """

    k: tuple
    v: tuple
    valid: jax.Array

    @classmethod
    def zeros(cls, config: OPTConfig, batch: int, slots: int, dtype=jnp.float32) -> "KVCache":
        h, d = config.num_attention_heads, config.head_dim
        layers = range(config.num_hidden_layers)
        return cls(k=tuple(jnp.zeros((batch, h, d, slots), dtype) for _ in layers),
                   v=tuple(jnp.zeros((batch, h, slots, d), dtype) for _ in layers),
                   valid=jnp.zeros((batch, slots), bool))


def _layer_norm(cfg: OPTConfig, dim: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as transformers computes it: the one-pass E[x^2]-E[x]^2 cancels when |mean| >> std,
    # which the residual streams of trained OPT models (with their outlier features) can reach.
    affine = cfg.layer_norm_elementwise_affine
    return nnx.LayerNorm(dim, epsilon=cfg.layer_norm_eps, param_dtype=dtype, use_bias=affine,
                         use_scale=affine, use_fast_variance=False, rngs=rngs)


def _linear(cfg: OPTConfig, din: int, dout: int, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    # OPT's own random init (normal, init_std) rather than nnx's lecun normal: random-weight models then
    # behave like OPT's (nnx's default embedding init gives rows of very different norms, and the longest
    # row wins every greedy step).
    return nnx.Linear(din, dout, use_bias=bias, param_dtype=dtype, rngs=rngs,
                      kernel_init=nnx.initializers.normal(cfg.init_std))


def _embed(cfg: OPTConfig, rows: int, dim: int, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(rows, dim, param_dtype=dtype, rngs=rngs,
                     embedding_init=nnx.initializers.normal(cfg.init_std))


def _norm(ln: nnx.LayerNorm, x: jax.Array) -> jax.Array:
    """LayerNorm computed in float32 whatever the activation dtype (fp16 overflows in the variance)."""
    with jax.named_scope("norm"):
        return ln(x.astype(jnp.float32)).astype(x.dtype)


def _project(layer, x: jax.Array) -> jax.Array:
    """A Linear (dense or sparse) applied to x, named "linear" in profiles; result in x's dtype."""
    with jax.named_scope("linear"):
        return layer(x).astype(x.dtype)


def _weight_dtype(layer) -> jnp.dtype:
    """The stored weight dtype of an nnx.Linear (kernel) or a sparse layer (values)."""
    weight = layer.kernel if hasattr(layer, "kernel") else layer.values
    return jnp.dtype(weight.dtype)


def mask_bias(mask: jax.Array) -> jax.Array:
    """mask (B, T, S) bool -> additive score bias (B, 1, T, S) float32: 0 where a key is visible.

    Built once per call and shared by every layer, so a layer's scores need one add instead of a select.
    A finite minimum (not -inf) keeps rows with no visible key (left padding) finite instead of NaN.
    """
    return jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, heads_split=None) -> jax.Array:
    """Softmax attention, named "attention" in profiles. q: (B, T, H, D) already scaled, in the compute
    dtype; k: (B, H, D, S), v: (B, H, S, D) in the cache's dtype; bias: (B, 1, T, S) float32 (see
    mask_bias). Returns (B, T, H, D) in q's dtype; scores, softmax and sums in float32.

    On the CPU this is the fused kernel (jax_flashllm.attention): no (B, H, T, S) buffer and no float32
    copy of a 16-bit cache per layer, and key blocks masked for every query (the empty tail of the cache)
    are skipped. Elsewhere, or with FLASHLLM_ATTENTION=reference, it is attention_reference's jnp.
    heads_split: None, or (mesh, axis) when sharding.shard_model has split the heads over a mesh axis: each
    device then attends with its own heads.
    """
    with jax.named_scope("attention"):
        if heads_split is not None:
            return attention_over_heads(q, k, v, bias, *heads_split)
        return attention(q, k, v, bias)


class OPTAttention(nnx.Module):
    def __init__(self, cfg: OPTConfig, dtype, rngs: nnx.Rngs):
        m, bias = cfg.hidden_size, cfg.enable_bias
        def linear():
            return _linear(cfg, m, m, bias, dtype, rngs)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = linear(), linear(), linear(), linear()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        # (mesh, axis) once sharding.shard_model has split the heads over a mesh axis, else None.
        self.heads_split = None

    def __call__(self, x, bias, kv=None, index=None):
        """x: (B, T, M); bias: (B, 1, T, S) float32 (mask_bias); kv: optional cache (k (B, H, D, S),
        v (B, H, S, D)).

        Returns (y (B, T, M), (k, v)); with a cache the new keys/values are written at slots [index, index+T).
        """
        b, t, _ = x.shape
        heads = (b, t, self.num_heads, self.head_dim)
        # OPT scales q after the projection (bias included), as transformers does. Projections come back in
        # x's dtype: a 16-bit nnx.Linear returns 16-bit values, and the scaling and the probabilities times v
        # must not round differently from a SparseLinear (which returns x's dtype).
        q = _project(self.q_proj, x).reshape(heads) * (self.head_dim ** -0.5)
        # (B, H, D, T) and (B, H, T, D): the cache's layouts
        k = _project(self.k_proj, x).reshape(heads).transpose(0, 2, 3, 1)
        v = _project(self.v_proj, x).reshape(heads).transpose(0, 2, 1, 3)
        if kv is not None:
            with jax.named_scope("attention"):
                k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, 0, 0, index))
                v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, 0, index, 0))
        y = attend(q, k, v, bias, self.heads_split).reshape(b, t, -1)
        return _project(self.out_proj, y), (k, v)


class OPTDecoderLayer(nnx.Module):
    def __init__(self, cfg: OPTConfig, dtype, rngs: nnx.Rngs):
        m = cfg.hidden_size
        self.pre_ln = cfg.do_layer_norm_before
        self.act = _ACTIVATIONS[cfg.activation_function]
        self.self_attn = OPTAttention(cfg, dtype, rngs)
        self.self_attn_layer_norm = _layer_norm(cfg, m, dtype, rngs)
        self.fc1 = _linear(cfg, m, cfg.ffn_dim, cfg.enable_bias, dtype, rngs)
        self.fc2 = _linear(cfg, cfg.ffn_dim, m, cfg.enable_bias, dtype, rngs)
        self.final_layer_norm = _layer_norm(cfg, m, dtype, rngs)

    def __call__(self, x, bias, kv=None, index=None):
        """x: (B, T, M) -> (B, T, M), new (k, v). Pre-LN (most sizes) or post-LN (opt-350m)."""
        h = _norm(self.self_attn_layer_norm, x) if self.pre_ln else x
        h, kv = self.self_attn(h, bias, kv, index)
        x = x + h
        if not self.pre_ln:
            x = _norm(self.self_attn_layer_norm, x)
        h = _norm(self.final_layer_norm, x) if self.pre_ln else x
        x = x + _project(self.fc2, self.act(_project(self.fc1, h)))
        if not self.pre_ln:
            x = _norm(self.final_layer_norm, x)
        return x, kv


class OPTForCausalLM(nnx.Module):
    """OPT with the LM head tied to the token embedding. Parameters in ``dtype`` (float32 by default)."""

    def __init__(self, config: OPTConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        cfg = self.config = config
        # One spelling of the dtype ("float32", jnp.float32, np.dtype) in every layer: it is static in the
        # graph, and two spellings would make jit compile the same model twice (e.g. after load_model).
        dtype = self.dtype = jnp.dtype(dtype)
        dw, m = cfg.word_embed_proj_dim, cfg.hidden_size
        self.embed_tokens = _embed(cfg, cfg.vocab_size, dw, dtype, rngs)
        self.embed_positions = _embed(cfg, cfg.max_position_embeddings + POSITION_OFFSET, m, dtype, rngs)
        if cfg.has_projections:
            self.project_in = _linear(cfg, dw, m, False, dtype, rngs)
            self.project_out = _linear(cfg, m, dw, False, dtype, rngs)
        else:
            self.project_in = self.project_out = None
        self.final_layer_norm = _layer_norm(cfg, m, dtype, rngs) if cfg.has_final_layer_norm else None
        self.layers = nnx.List([OPTDecoderLayer(cfg, dtype, rngs) for _ in range(cfg.num_hidden_layers)])

    @classmethod
    def abstract(cls, config: OPTConfig, dtype=jnp.float32) -> "OPTForCausalLM":
        """The model with shapes/dtypes only (no memory, no random init), e.g. to fill from a checkpoint.

        Layers are traced one at a time: one nnx.eval_shape over the whole model costs time quadratic in
        its size (minutes for opt-175b), one per layer stays linear.
        """
        dtype = jnp.dtype(dtype)  # as in __init__: one spelling, one graph
        shell = dataclasses.replace(config, num_hidden_layers=0)
        model = nnx.eval_shape(lambda: cls(shell, rngs=nnx.Rngs(0), dtype=dtype))
        model.config = config
        model.layers = nnx.List([nnx.eval_shape(lambda: OPTDecoderLayer(config, dtype, nnx.Rngs(0)))
                                 for _ in range(config.num_hidden_layers)])
        return model

    @property
    def compute_dtype(self) -> jnp.dtype:
        """Dtype of the activations and the KV cache: the decoder projections' weight dtype when they all
        share one 16-bit dtype (a sparsified model, or one densified to bfloat16), else the parameter
        dtype. Read at trace time. A sparse bf16 model then streams its residual, attention and cache in
        bf16 as HF's bf16 model does; LayerNorms and softmax still compute in float32."""
        dtypes = {_weight_dtype(m) for layer in self.layers
                  for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                            layer.self_attn.out_proj, layer.fc1, layer.fc2)}
        if len(dtypes) == 1 and next(iter(dtypes)).itemsize == 2:
            return next(iter(dtypes))
        return self.dtype

    def _embed(self, input_ids, positions):
        """input_ids, positions: (B, T) int32 -> (B, T, M) in the compute dtype."""
        dtype = self.compute_dtype
        with jax.named_scope("embed"):
            x = self.embed_tokens(input_ids).astype(dtype)
        if self.project_in is not None:
            x = _project(self.project_in, x)
        with jax.named_scope("embed"):
            # Position -1 (padding) maps to row 1, as in transformers; padded rows are masked anyway.
            return x + self.embed_positions(positions + POSITION_OFFSET).astype(dtype)

    def _finish(self, x):
        if self.final_layer_norm is not None:
            x = _norm(self.final_layer_norm, x)
        if self.project_out is not None:
            x = _project(self.project_out, x)
        return x

    def cast_embeddings(self, dtype) -> None:
        """Store the token and position embeddings, and so the tied LM head, in ``dtype`` (in place).

        After ``sparsify`` the LM head (vocab x word_embed_proj_dim) is the largest dense matrix left and
        decode reads all of it every token; bfloat16 halves that. Activations keep the model dtype; the head
        multiplies in ``dtype`` with float32 accumulation. Works on an ``abstract`` model too (dtypes only).
        """
        for embed in (self.embed_tokens, self.embed_positions):
            if not isinstance(embed, nnx.Embed):  # a PackedEmbed: its dtype was chosen when it was packed
                continue
            value = embed.embedding.get_value()
            if isinstance(value, jax.ShapeDtypeStruct):  # an abstract model: load_model fills it afterwards
                value = jax.ShapeDtypeStruct(value.shape, jnp.dtype(dtype), sharding=value.sharding)
            else:
                value = value.astype(dtype)
            embed.embedding = nnx.Param(value)

    def pack_head(self, sparsity: float = 0.0, *, dtype=jnp.bfloat16, format: str | None = None,
                  method: str = "magnitude") -> None:
        """Store the token embedding -- the tied LM head -- once as a PackedEmbed (in place): ``dtype``
        (bfloat16) in the "dense" format by default, so the head reads 2 bytes per weight through the
        project's kernel; ``sparsity`` > 0 prunes it (format None: "auto"). Lookups gather from the same
        values. ``sparsify(model, s, include=[..., "embed_tokens"])`` does the same with pruning."""
        self.embed_tokens = PackedEmbed.from_embed(self.embed_tokens, sparsity, method=method, dtype=dtype,
                                                   format=format)

    def logits(self, h: jax.Array) -> jax.Array:
        """Tied LM head. h: (B, T, word_embed_proj_dim) -> logits (B, T, vocab_size) float32."""
        with jax.named_scope("head"):
            if isinstance(self.embed_tokens, PackedEmbed):
                return self.embed_tokens.attend(h)
            table = self.embed_tokens.embedding[...]
            return jnp.einsum("BTM,VM->BTV", h.astype(table.dtype), table, preferred_element_type=jnp.float32)

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids: (B, T) int; attention_mask: (B, T) 0/1 (left padding) -> (B, T, word_embed_proj_dim)."""
        valid = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
        positions = jnp.where(valid, jnp.cumsum(valid, axis=-1) - 1, -1)
        t = input_ids.shape[-1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        bias = mask_bias(causal[None] & valid[:, None, :])
        x = self._embed(input_ids, positions)
        for layer in self.layers:
            x, _ = layer(x, bias)
        return self._finish(x)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Plain forward. input_ids: (B, T) int; attention_mask: (B, T) 0/1 -> logits (B, T, vocab) float32."""
        return self.logits(self.hidden_states(input_ids, attention_mask))

    def decode(self, input_ids: jax.Array, cache: KVCache, index: jax.Array,
               token_valid: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Run T new tokens against the cache (prefill: T = prompt length; decode: T = 1).

        input_ids: (B, T) int32, written to cache slots [index, index + T); token_valid: (B, T) bool (False for
        left padding). Positions continue from the number of valid slots already in the cache.
        Returns hidden (B, T, word_embed_proj_dim) and the updated cache.
        """
        b, t = input_ids.shape
        if token_valid is None:
            token_valid = jnp.ones((b, t), bool)
        start = jnp.sum(cache.valid, axis=-1, keepdims=True, dtype=jnp.int32)
        positions = jnp.where(token_valid, start + jnp.cumsum(token_valid, axis=-1, dtype=jnp.int32) - 1, -1)
        valid = jax.lax.dynamic_update_slice(cache.valid, token_valid, (0, index))
        slots = jnp.arange(valid.shape[1])
        # Query at slot index+i sees key slots <= index+i that hold a real token.
        bias = mask_bias((slots[None, :] <= (index + jnp.arange(t))[:, None])[None] & valid[:, None, :])
        x = self._embed(input_ids, positions)
        ks, vs = [], []
        for layer, k, v in zip(self.layers, cache.k, cache.v):
            x, (k, v) = layer(x, bias, (k, v), index)
            ks.append(k)
            vs.append(v)
        return self._finish(x), KVCache(tuple(ks), tuple(vs), valid)
