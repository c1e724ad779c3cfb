"""A zoo of tiny models (random init, no downloads) with the routing each parameter should get.

Each builder returns ``(model, example_input, expected)``:

- ``example_input``: what the model takes for a tiny batch, a dict for ``model(**example_input)``
  or a tensor for ``model(example_input)``;
- ``expected``: an ordered list of ``(glob, role, layout)`` rules, matched with ``fnmatch``
  against the full parameter name, first match wins. Every parameter matches a rule and every
  rule matches a parameter (``check_rules``), so a list is exhaustive and has no dead rules.

The rules are written by hand from what each parameter IS (its module, its use in the forward),
not from what any router says:

- ``embedding``: weights of ``nn.Embedding`` / ``nn.EmbeddingBag`` (a tied head is the same
  tensor and is listed once, under its first name), and free additive tables with a leading
  broadcast dim of 1 and at least two dims larger than 1 (ViT position embeddings);
- ``head``: the matrix that produces the output the user reads (untied LM heads, classifier
  output layers, CLIP's projections, CTC heads);
- ``vector``: tensors with fewer than two dims larger than 1 (biases, norm gains, scalars,
  ``(1, 1, D)`` class tokens, weight-norm magnitudes);
- ``hidden``: every other tensor with two or more dims larger than 1.

``layout`` is the storage order of a hidden or head matrix (``orthoptim.functional.layout``):
``"out_in"`` (torch's), ``"in_out"`` (Hugging Face ``Conv1D``), ``"stacked_out_in"`` (stacked
mixture-of-experts weights used as ``F.linear(x, W[e])``); ``None`` for embeddings and vectors,
which the matrix optimizer never sees.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROLES = ("embedding", "head", "hidden", "vector")
LAYOUTS = ("out_in", "in_out", "stacked_out_in", "stacked_in_out")
MATRIX_ROLES = ("hidden", "head")

Rule = tuple[str, str, str | None]
Built = tuple[nn.Module, Any, list[Rule]]


@dataclass(frozen=True)
class Case:
    """One zoo entry: ``build()`` gives ``(model, example_input, expected)``; ``requires`` is the
    package it imports (the tests skip the case where that package does not import)."""

    name: str
    build: Callable[[], Built]
    requires: str | None = None


CASES: dict[str, Case] = {}


def case(requires: str | None = None) -> Callable[[Callable[[], Built]], Callable[[], Built]]:
    """Register a builder in ``CASES`` under its function name."""

    def register(fn: Callable[[], Built]) -> Callable[[], Built]:
        CASES[fn.__name__] = Case(fn.__name__, fn, requires)
        return fn

    return register


# --- the expectation ------------------------------------------------------------------------


def rule_for(name: str, rules: list[Rule]) -> Rule | None:
    """The first rule whose glob matches ``name``."""
    return next((r for r in rules if fnmatch.fnmatchcase(name, r[0])), None)


def check_rules(model: nn.Module, rules: list[Rule]) -> None:
    """``AssertionError`` unless every parameter matches a rule, every rule matches a parameter,
    and each rule's role and layout are well formed."""
    names = [n for n, _ in model.named_parameters()]
    unmatched = [n for n in names if rule_for(n, rules) is None]
    assert not unmatched, f"parameters no rule covers: {unmatched}"
    dead = [r[0] for r in rules if not any(fnmatch.fnmatchcase(n, r[0]) for n in names)]
    assert not dead, f"rules that match no parameter: {dead}"
    for glob, role, layout in rules:
        assert role in ROLES, f"{glob}: unknown role {role!r}"
        if role in MATRIX_ROLES:
            assert layout in LAYOUTS, f"{glob}: a {role} matrix needs a layout, got {layout!r}"
        else:
            assert layout is None, f"{glob}: a {role} has no layout, got {layout!r}"


def expected_roles(model: nn.Module, rules: list[Rule]) -> dict[str, str]:
    """``{name: role}`` for every parameter of ``model`` (``check_rules`` first)."""
    out = {}
    for name, _ in model.named_parameters():
        rule = rule_for(name, rules)
        assert rule is not None, f"no rule covers {name}"
        out[name] = rule[1]
    return out


def expected_layouts(model: nn.Module, rules: list[Rule]) -> dict[str, str]:
    """``{name: layout}`` for every hidden or head parameter of ``model`` with ``ndim >= 2``."""
    out = {}
    for name, p in model.named_parameters():
        rule = rule_for(name, rules)
        assert rule is not None, f"no rule covers {name}"
        if rule[1] in MATRIX_ROLES and p.ndim >= 2:
            assert rule[2] is not None
            out[name] = rule[2]
    return out


def dims_above_one(p: Tensor) -> int:
    return sum(1 for d in p.shape if d > 1)


def run_forward(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, Mapping):
        return model(**example_input)
    return model(example_input)


def loss_of(output: Any) -> Tensor:
    """The model's own loss where it computes one, else a plain function of its logits (one
    whose gradient is not zero at zero logits: torchvision's ViT head starts at zero)."""
    loss = getattr(output, "loss", None)
    if loss is not None:
        return loss
    logits = output if isinstance(output, Tensor) else output.logits
    return (logits.float() - 1.0).square().mean()


# --- shared bits ------------------------------------------------------------------------------


def _tokens(vocab: int, batch: int = 2, seq: int = 8, low: int = 0, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (batch, seq), generator=g)


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _lm_input(vocab: int) -> dict[str, Tensor]:
    ids = _tokens(vocab)
    return {"input_ids": ids, "labels": ids.clone()}


# Decoder-only LMs of the Llama family share their names.
_LLAMA_TRUNK: list[Rule] = [
    ("model.embed_tokens.weight", "embedding", None),
    ("model.layers.*.self_attn.[qkvo]_proj.weight", "hidden", "out_in"),
    ("model.layers.*.input_layernorm.weight", "vector", None),
    ("model.layers.*.post_attention_layernorm.weight", "vector", None),
    ("model.norm.weight", "vector", None),
]

_LLAMA_SIZES = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 64,
}


# --- Hugging Face transformers --------------------------------------------------------------


def gpt2_config(*, vocab: int, n_positions: int, n_embd: int) -> Any:
    """A tiny two-layer GPT-2 config without dropout (token ids inside the vocabulary)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


@case(requires="transformers")
def gpt2() -> Built:
    """GPT-2: ``Conv1D`` weights stored ``(in, out)``; the LM head is tied to ``wte``."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = gpt2_config(vocab=128, n_positions=32, n_embd=32)
    rules: list[Rule] = [
        ("transformer.wte.weight", "embedding", None),  # also the (tied) LM head
        ("transformer.wpe.weight", "embedding", None),
        ("transformer.h.*.attn.c_attn.weight", "hidden", "in_out"),
        ("transformer.h.*.attn.c_proj.weight", "hidden", "in_out"),
        ("transformer.h.*.mlp.c_fc.weight", "hidden", "in_out"),
        ("transformer.h.*.mlp.c_proj.weight", "hidden", "in_out"),
        ("transformer.h.*.ln_[12].weight", "vector", None),
        ("transformer.ln_f.weight", "vector", None),
        ("*.bias", "vector", None),
    ]
    return GPT2LMHeadModel(config), _lm_input(128), rules


@case(requires="transformers")
def llama() -> Built:
    """Llama: RMSNorm gains, no biases, untied LM head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**_LLAMA_SIZES, intermediate_size=64, tie_word_embeddings=False)
    rules: list[Rule] = [
        *_LLAMA_TRUNK,
        ("model.layers.*.mlp.gate_proj.weight", "hidden", "out_in"),
        ("model.layers.*.mlp.up_proj.weight", "hidden", "out_in"),
        ("model.layers.*.mlp.down_proj.weight", "hidden", "out_in"),
        ("lm_head.weight", "head", "out_in"),
    ]
    return LlamaForCausalLM(config), _lm_input(128), rules


@case(requires="transformers")
def qwen2_tied() -> Built:
    """Qwen2 with a tied LM head (as the small Qwen2 checkpoints): q/k/v biases, no lm_head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**_LLAMA_SIZES, intermediate_size=64, tie_word_embeddings=True)
    rules: list[Rule] = [
        *_LLAMA_TRUNK,  # model.embed_tokens.weight is also the LM head
        ("model.layers.*.self_attn.[qkv]_proj.bias", "vector", None),
        ("model.layers.*.mlp.[gud]*_proj.weight", "hidden", "out_in"),
    ]
    return Qwen2ForCausalLM(config), _lm_input(128), rules


@case(requires="transformers")
def mixtral() -> Built:
    """Mixtral: stacked experts ``(E, 2*inter, hidden)`` / ``(E, hidden, inter)`` used as
    ``F.linear(x, W[e])``, and a router that is a free ``(E, hidden)`` matrix."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        **_LLAMA_SIZES,
        intermediate_size=48,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    rules: list[Rule] = [
        *_LLAMA_TRUNK,
        ("model.layers.*.mlp.gate.weight", "hidden", "out_in"),  # router: F.linear(x, W)
        ("model.layers.*.mlp.experts.gate_up_proj", "hidden", "stacked_out_in"),
        ("model.layers.*.mlp.experts.down_proj", "hidden", "stacked_out_in"),
        ("lm_head.weight", "head", "out_in"),
    ]
    return MixtralForCausalLM(config), _lm_input(128), rules


@case(requires="transformers")
def qwen2_moe() -> Built:
    """Qwen2-MoE: stacked experts, a shared expert, and a ``Linear(hidden, 1)`` shared-expert
    gate whose ``(1, hidden)`` weight has one dim larger than 1 (a vector)."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        **_LLAMA_SIZES,
        intermediate_size=64,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=48,
        num_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    rules: list[Rule] = [
        *_LLAMA_TRUNK,
        ("model.layers.*.self_attn.[qkv]_proj.bias", "vector", None),
        ("model.layers.*.mlp.gate.weight", "hidden", "out_in"),
        ("model.layers.*.mlp.experts.gate_up_proj", "hidden", "stacked_out_in"),
        ("model.layers.*.mlp.experts.down_proj", "hidden", "stacked_out_in"),
        ("model.layers.*.mlp.shared_expert.[gud]*_proj.weight", "hidden", "out_in"),
        ("model.layers.*.mlp.shared_expert_gate.weight", "vector", None),  # (1, hidden)
        ("lm_head.weight", "head", "out_in"),
    ]
    return Qwen2MoeForCausalLM(config), _lm_input(128), rules


_BERT_SIZES = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def _bert_trunk(prefix: str) -> list[Rule]:
    return [
        (f"{prefix}.embeddings.word_embeddings.weight", "embedding", None),
        (f"{prefix}.embeddings.position_embeddings.weight", "embedding", None),
        (f"{prefix}.embeddings.token_type_embeddings.weight", "embedding", None),
        (f"{prefix}.encoder.layer.*.attention.self.query.weight", "hidden", "out_in"),
        (f"{prefix}.encoder.layer.*.attention.self.key.weight", "hidden", "out_in"),
        (f"{prefix}.encoder.layer.*.attention.self.value.weight", "hidden", "out_in"),
        (f"{prefix}.encoder.layer.*.attention.output.dense.weight", "hidden", "out_in"),
        (f"{prefix}.encoder.layer.*.intermediate.dense.weight", "hidden", "out_in"),
        (f"{prefix}.encoder.layer.*.output.dense.weight", "hidden", "out_in"),
        ("*.LayerNorm.weight", "vector", None),
        ("*.bias", "vector", None),
    ]


@case(requires="transformers")
def bert_mlm() -> Built:
    """BERT masked LM with an untied decoder: the decoder is the head, the transform dense
    before it is hidden, and the decoder's bias is a separate vector."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(**_BERT_SIZES, tie_word_embeddings=False)
    rules: list[Rule] = [
        *_bert_trunk("bert"),
        ("cls.predictions.transform.dense.weight", "hidden", "out_in"),
        ("cls.predictions.decoder.weight", "head", "out_in"),
        ("cls.predictions.bias", "vector", None),
    ]
    return BertForMaskedLM(config), _lm_input(128), rules


@case(requires="transformers")
def bert_cls() -> Built:
    """BERT sequence classifier: the pooler dense is hidden, ``classifier`` the head."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(**_BERT_SIZES, num_labels=3)
    rules: list[Rule] = [
        *_bert_trunk("bert"),
        ("bert.pooler.dense.weight", "hidden", "out_in"),
        ("classifier.weight", "head", "out_in"),
    ]
    example = {"input_ids": _tokens(128), "labels": torch.tensor([0, 2])}
    return BertForSequenceClassification(config), example, rules


@case(requires="transformers")
def roberta_cls() -> Built:
    """RoBERTa classifier: ``classifier.dense`` is hidden, ``classifier.out_proj`` the head."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(**_BERT_SIZES, num_labels=3, pad_token_id=1)
    rules: list[Rule] = [
        *_bert_trunk("roberta"),
        ("classifier.dense.weight", "hidden", "out_in"),
        ("classifier.out_proj.weight", "head", "out_in"),
    ]
    example = {"input_ids": _tokens(128, low=2), "labels": torch.tensor([1, 0])}
    return RobertaForSequenceClassification(config), example, rules


@case(requires="transformers")
def t5() -> Built:
    """T5: one shared embedding (encoder, decoder and the tied LM head), relative attention
    bias tables (``nn.Embedding(buckets, heads)``) in the first block of each stack."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=128,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    rules: list[Rule] = [
        ("shared.weight", "embedding", None),
        ("*.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "embedding", None),
        ("*.block.*.layer.0.SelfAttention.[qkvo].weight", "hidden", "out_in"),
        ("decoder.block.*.layer.1.EncDecAttention.[qkvo].weight", "hidden", "out_in"),
        ("*.block.*.layer.*.DenseReluDense.wi.weight", "hidden", "out_in"),
        ("*.block.*.layer.*.DenseReluDense.wo.weight", "hidden", "out_in"),
        ("*.block.*.layer.*.layer_norm.weight", "vector", None),
        ("encoder.final_layer_norm.weight", "vector", None),
        ("decoder.final_layer_norm.weight", "vector", None),
    ]
    example = {"input_ids": _tokens(128, low=1), "labels": _tokens(128, seq=6, low=1, seed=1)}
    return T5ForConditionalGeneration(config), example, rules


@case(requires="transformers")
def vit() -> Built:
    """ViT classifier: ``cls_token`` (1, 1, D) is a vector, ``position_embeddings`` (1, S, D) an
    embedding table, the patch conv hidden, ``classifier`` the head."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    rules: list[Rule] = [
        ("vit.embeddings.cls_token", "vector", None),
        ("vit.embeddings.position_embeddings", "embedding", None),
        ("vit.embeddings.patch_embeddings.projection.weight", "hidden", "out_in"),
        ("vit.layers.*.attention.[qkvo]_proj.weight", "hidden", "out_in"),
        ("vit.layers.*.mlp.fc[12].weight", "hidden", "out_in"),
        ("vit.layers.*.layernorm_*.weight", "vector", None),
        ("vit.layernorm.weight", "vector", None),
        ("classifier.weight", "head", "out_in"),
        ("*.bias", "vector", None),
    ]
    example = {"pixel_values": _randn(2, 3, 16, 16), "labels": torch.tensor([3, 7])}
    return ViTForImageClassification(config), example, rules


@case(requires="transformers")
def clip() -> Built:
    """CLIP: two towers; the text and visual projections are the heads (their outputs are the
    embeddings the user reads), ``class_embedding`` (D,) and ``logit_scale`` () are vectors."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 128,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "projection_dim": 24,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        vision_config={
            "image_size": 16,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "projection_dim": 24,
        },
        projection_dim=24,
    )
    rules: list[Rule] = [
        ("logit_scale", "vector", None),
        ("text_model.embeddings.token_embedding.weight", "embedding", None),
        ("text_model.embeddings.position_embedding.weight", "embedding", None),
        ("vision_model.embeddings.position_embedding.weight", "embedding", None),
        ("vision_model.embeddings.class_embedding", "vector", None),
        ("vision_model.embeddings.patch_embedding.weight", "hidden", "out_in"),
        ("*_model.encoder.layers.*.self_attn.[qkv]_proj.weight", "hidden", "out_in"),
        ("*_model.encoder.layers.*.self_attn.out_proj.weight", "hidden", "out_in"),
        ("*_model.encoder.layers.*.mlp.fc[12].weight", "hidden", "out_in"),
        ("*_model.encoder.layers.*.layer_norm[12].weight", "vector", None),
        ("text_model.final_layer_norm.weight", "vector", None),
        ("vision_model.pre_layrnorm.weight", "vector", None),
        ("vision_model.post_layernorm.weight", "vector", None),
        ("visual_projection.weight", "head", "out_in"),
        ("text_projection.weight", "head", "out_in"),
        ("*.bias", "vector", None),
    ]
    example = {
        "input_ids": _tokens(128, low=3),
        "pixel_values": _randn(2, 3, 16, 16),
        "return_loss": True,
    }
    return CLIPModel(config), example, rules


@case(requires="transformers")
def whisper() -> Built:
    """Whisper: 1-D conv front end (hidden), a frozen sinusoidal position table in the
    encoder and a learned one in the decoder (embeddings), ``proj_out`` tied to the decoder's
    token embedding."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=128,
        num_mel_bins=8,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=16,
        max_target_positions=32,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    rules: list[Rule] = [
        ("model.encoder.conv[12].weight", "hidden", "out_in"),
        ("model.encoder.embed_positions.weight", "embedding", None),  # requires_grad=False
        ("model.decoder.embed_tokens.weight", "embedding", None),  # also proj_out (tied)
        ("model.decoder.embed_positions.weight", "embedding", None),
        ("model.*coder.layers.*.self_attn.[qkv]_proj.weight", "hidden", "out_in"),
        ("model.*coder.layers.*.self_attn.out_proj.weight", "hidden", "out_in"),
        ("model.decoder.layers.*.encoder_attn.[qkv]_proj.weight", "hidden", "out_in"),
        ("model.decoder.layers.*.encoder_attn.out_proj.weight", "hidden", "out_in"),
        ("model.*coder.layers.*.fc[12].weight", "hidden", "out_in"),
        ("model.*coder.layers.*.*layer_norm.weight", "vector", None),
        ("model.*coder.layer_norm.weight", "vector", None),
        ("*.bias", "vector", None),
    ]
    example = {
        "input_features": _randn(2, 8, 32),
        "labels": _tokens(128, seq=6, low=4, seed=1),
    }
    return WhisperForConditionalGeneration(config), example, rules


@case(requires="transformers")
def wav2vec2_ctc() -> Built:
    """Wav2Vec2 for CTC: conv feature extractor (hidden), a grouped positional conv under
    ``weight_norm(dim=2)`` (magnitude ``(1, 1, K)``: a vector; direction: hidden), the learned
    mask vector ``masked_spec_embed`` (D,), and ``lm_head`` (the CTC head)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
    )
    rules: list[Rule] = [
        ("wav2vec2.masked_spec_embed", "vector", None),
        ("wav2vec2.feature_extractor.conv_layers.*.conv.weight", "hidden", "out_in"),
        ("wav2vec2.feature_extractor.conv_layers.0.layer_norm.weight", "vector", None),
        ("wav2vec2.feature_projection.layer_norm.weight", "vector", None),
        ("wav2vec2.feature_projection.projection.weight", "hidden", "out_in"),
        ("wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0", "vector", None),
        (
            "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1",
            "hidden",
            "out_in",
        ),
        ("wav2vec2.encoder.layer_norm.weight", "vector", None),
        ("wav2vec2.encoder.layers.*.attention.[qkv]_proj.weight", "hidden", "out_in"),
        ("wav2vec2.encoder.layers.*.attention.out_proj.weight", "hidden", "out_in"),
        ("wav2vec2.encoder.layers.*.feed_forward.intermediate_dense.weight", "hidden", "out_in"),
        ("wav2vec2.encoder.layers.*.feed_forward.output_dense.weight", "hidden", "out_in"),
        ("wav2vec2.encoder.layers.*.*layer_norm.weight", "vector", None),
        ("lm_head.weight", "head", "out_in"),
        ("*.bias", "vector", None),
    ]
    example = {"input_values": _randn(2, 400), "labels": _tokens(16, seq=5, low=1, seed=1)}
    return Wav2Vec2ForCTC(config), example, rules


# --- torchvision ------------------------------------------------------------------------------


@case(requires="torchvision")
def tv_resnet18() -> Built:
    """torchvision ResNet-18: 7x7 / 3x3 / 1x1 (downsample) convs are hidden, ``fc`` the head."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    rules: list[Rule] = [
        ("conv1.weight", "hidden", "out_in"),
        ("layer[1-4].*.conv[12].weight", "hidden", "out_in"),
        ("layer[2-4].0.downsample.0.weight", "hidden", "out_in"),  # (out, in, 1, 1)
        ("bn1.*", "vector", None),
        ("layer[1-4].*.bn[12].*", "vector", None),
        ("layer[2-4].0.downsample.1.*", "vector", None),
        ("fc.weight", "head", "out_in"),
        ("fc.bias", "vector", None),
    ]
    return resnet18(num_classes=10), _randn(2, 3, 32, 32), rules


@case(requires="torchvision")
def tv_vit() -> Built:
    """torchvision ViT: ``class_token`` (1, 1, D) a vector, ``encoder.pos_embedding`` (1, S, D)
    an embedding table, the attention's ``out_proj`` hidden (not a head), ``heads.head`` the
    head."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    rules: list[Rule] = [
        ("class_token", "vector", None),
        ("encoder.pos_embedding", "embedding", None),
        ("conv_proj.weight", "hidden", "out_in"),
        ("encoder.layers.encoder_layer_*.self_attention.in_proj_weight", "hidden", "out_in"),
        ("encoder.layers.encoder_layer_*.self_attention.in_proj_bias", "vector", None),
        ("encoder.layers.encoder_layer_*.self_attention.out_proj.weight", "hidden", "out_in"),
        ("encoder.layers.encoder_layer_*.mlp.[03].weight", "hidden", "out_in"),
        ("encoder.layers.encoder_layer_*.ln_[12].weight", "vector", None),
        ("encoder.ln.weight", "vector", None),
        ("heads.head.weight", "head", "out_in"),
        ("*.bias", "vector", None),
    ]
    return model, _randn(2, 3, 32, 32), rules


# --- synthetic models -------------------------------------------------------------------------


class TiedFunctionalLM(nn.Module):
    """An LM whose logits are ``F.linear(h, self.emb.weight)``: the head is the embedding,
    tied by a functional call (no head module); the last ``nn.Linear`` is the trunk's MLP."""

    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm_f = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        h = h + self.mlp(self.norm(h))
        return F.linear(self.norm_f(h), self.emb.weight)


class ProjFirstClassifier(nn.Module):
    """A classifier whose output layer ``proj`` is declared before its trunk and used last."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 10)
        self.trunk = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.trunk(x)))


class WeightNormNet(nn.Module):
    """A small net with ``parametrizations.weight_norm`` on its hidden Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.utils.parametrizations.weight_norm(nn.Linear(8, 32))
        self.out = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inp(x)))


@case()
def tied_functional_lm() -> Built:
    torch.manual_seed(0)
    rules: list[Rule] = [
        ("emb.weight", "embedding", None),  # also the output projection
        ("mlp.[02].weight", "hidden", "out_in"),
        ("norm.weight", "vector", None),
        ("norm_f.weight", "vector", None),
        ("*.bias", "vector", None),
    ]
    return TiedFunctionalLM(), _tokens(64), rules


@case()
def proj_first_classifier() -> Built:
    torch.manual_seed(0)
    rules: list[Rule] = [
        ("proj.weight", "head", "out_in"),
        ("trunk.[02].weight", "hidden", "out_in"),
        ("*.bias", "vector", None),
    ]
    return ProjFirstClassifier(), _randn(4, 8), rules


@case()
def weight_norm_net() -> Built:
    torch.manual_seed(0)
    rules: list[Rule] = [
        ("inp.parametrizations.weight.original0", "vector", None),  # magnitude (32, 1)
        ("inp.parametrizations.weight.original1", "hidden", "out_in"),  # direction (32, 8)
        ("out.weight", "head", "out_in"),
        ("*.bias", "vector", None),
    ]
    return WeightNormNet(), _randn(4, 8), rules
