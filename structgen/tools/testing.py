"""Test helpers that build real (tiny) things, never mocks of our own code.

:func:`build_tiny_model` writes a 2-layer Llama and a byte-level BPE tokenizer trained on a
small JSON-flavoured corpus into a Hugging Face directory. It loads through exactly the same
code path as a real model, so tests exercise the real decode loop, grammar engines and
tokenizer handling in well under a second per request.

The weights get a few seconds of training on chat-formatted JSON answers. A purely random
model tends to loop inside a JSON string forever (every output would hit ``max_tokens``);
a model that has seen JSON closes its strings and ends its answers by itself, so tests can
check that *finished* outputs are valid without biasing the decoder in any way.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    """Text that gives the tokenizer merges for JSON punctuation, keys and prose."""
    words = ["kind", "target", "paths", "confidence", "rationale", "error", "type", "root", "cause", "file", "line", "steps", "verdict", "pass", "revise", "fail", "issues", "severity", "next", "action", "name", "value", "items", "id", "title", "description", "true", "false", "null", "create", "edit", "explain", "run", "tests", "debug", "refactor", "other", "the", "a", "of", "to", "in", "is", "and", "for", "with", "on", "that", "this", "user", "assistant", "system", "think"]
    lines = [" ".join(words), "<think> reasoning about it </think>"]
    for i, w in enumerate(words):
        obj = {w: i, "name": w, "items": [w, i * 0.5, True, None], "nested": {"key": w}}
        lines.append(json.dumps(obj))
        lines.append(json.dumps(obj, separators=(",", ":")))
        lines.append(json.dumps(obj, indent=2))
    lines.append('{}[]{"":0,"a":-1.5e3}')
    return lines * 4


def _json_samples(rng: random.Random, n: int, thinking: str | None = None) -> list[str]:
    """Chat-formatted prompts with short JSON answers (what the tiny model is trained on),
    each answer after ``<think>{thinking}</think>`` when ``thinking`` is given."""
    words = ["kind", "target", "paths", "confidence", "rationale", "error", "type", "file", "line", "steps", "verdict", "issues", "severity", "name", "value", "items", "id", "title", "description"]

    def value(depth: int) -> object:
        r = rng.random()
        if depth < 2 and r < 0.15:
            return {rng.choice(words): value(depth + 1) for _ in range(rng.randint(1, 3))}
        if depth < 2 and r < 0.3:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if r < 0.6:
            return " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        if r < 0.75:
            return rng.randint(-50, 500)
        if r < 0.85:
            return round(rng.random(), 2)
        return rng.choice([True, False, None])

    out = []
    for _ in range(n):
        obj = {rng.choice(words): value(0) for _ in range(rng.randint(1, 4))}
        answer = json.dumps(obj, separators=(",", ":")) if rng.random() < 0.7 \
            else json.dumps(obj)
        if thinking is not None:
            answer = f"<think>{thinking}</think>\n{answer}"
        out.append(f"<|im_start|>user\n{rng.choice(words)} {rng.choice(words)}<|im_end|>\n"
                   f"<|im_start|>assistant\n{answer}<|im_end|>\n")
    return out


def _train(model: object, tokenizer: object, steps: int, seed: int,
           thinking: str | None = None) -> None:
    import torch

    rng = random.Random(seed)
    samples = [tokenizer.encode(s, add_special_tokens=False)  # type: ignore[attr-defined]
               for s in _json_samples(rng, 512, thinking)]
    pad = tokenizer.pad_token_id  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)  # type: ignore[attr-defined]
    model.train()  # type: ignore[attr-defined]
    for _ in range(steps):
        batch = rng.sample(samples, 16)
        width = min(128, max(len(x) for x in batch))
        ids = torch.full((16, width), pad)
        for i, x in enumerate(batch):
            ids[i, :min(width, len(x))] = torch.tensor(x[:width])
        labels = ids.masked_fill(ids == pad, -100)
        loss = model(input_ids=ids, labels=labels).loss  # type: ignore[operator]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()  # type: ignore[attr-defined]


def build_tiny_model(path: Path, *, vocab_size: int = 600, seed: int = 0,
                     train_steps: int = 0, thinking: str | None = None) -> Path:
    """Write a tiny Llama + trained tokenizer (with chat template) to ``path``.

    Builds in a few seconds. Byte-level BPE means every byte sequence is encodable, so any
    grammar's strings are reachable. ``train_steps=0`` leaves the weights purely random;
    with ``thinking`` the training answers open with ``<think>{thinking}</think>``, so the
    model writes (and closes) a thinking block of its own. Returns ``path``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    if train_steps:
        _train(model, fast, train_steps, seed, thinking)
    model.save_pretrained(path)
    return path


def build_tiny_gguf(hf_dir: Path, out: Path, *, favorite: int | None = None) -> Path:
    """Write the tiny Llama at ``hf_dir`` (from :func:`build_tiny_model`) as a GGUF file,
    so the llama.cpp runtime runs the same weights and tokenizer as the transformers one.

    Uses the ``gguf`` package's writer: float32 tensors under llama.cpp's names, the
    byte-level BPE vocabulary and merges, and the chat template. Returns ``out``.

    ``favorite``: a token id the model then always prefers, wherever the grammar allows it
    (every layer's output is zeroed, so the last hidden state is the input token's
    embedding, and every embedding shares one large component that only the favorite's
    output row reads). That is the runaway a small model does for real: endless spaces,
    digits or string text; tests use it to exercise the decoder's termination guards.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    hf_dir, out = Path(hf_dir), Path(out)
    config = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // n_head

    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    special = {added["id"] for added in tok.get("added_tokens", []) if added.get("special")}
    n_vocab = config["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for text, i in vocab.items():
        if i < n_vocab:
            tokens[i] = text
            types[i] = int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("structgen-tiny-llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the byte-level pre-tokenizer's split pattern
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(config["eos_token_id"])
    if config.get("pad_token_id") is not None:
        writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok_config.get("chat_template") or CHAT_TEMPLATE)

    def permute(w: np.ndarray, heads: int) -> np.ndarray:
        # Hugging Face stores rotary halves apart; llama.cpp wants them interleaved
        return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
                .swapaxes(1, 2).reshape(w.shape))

    names = {"self_attn.o_proj": "attn_output", "self_attn.v_proj": "attn_v",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    embed = weights["model.embed_tokens.weight"]
    if favorite is not None:
        embed = embed.copy()
        embed[:, 0] = 1.0  # the shared component
        output = embed.copy()
        output[favorite] = 0.0
        output[favorite, 0] = 10.0
        for layer in range(config["num_hidden_layers"]):
            for hf in ("self_attn.o_proj", "mlp.down_proj"):
                key = f"model.layers.{layer}.{hf}.weight"
                weights[key] = np.zeros_like(weights[key])
        writer.add_tensor("output.weight", output)
    elif "lm_head.weight" in weights and not config.get("tie_word_embeddings"):
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for layer in range(config["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        writer.add_tensor(f"blk.{layer}.attn_q.weight",
                          permute(weights[pre + "self_attn.q_proj.weight"], n_head))
        writer.add_tensor(f"blk.{layer}.attn_k.weight",
                          permute(weights[pre + "self_attn.k_proj.weight"], n_kv))
        for hf, name in names.items():
            writer.add_tensor(f"blk.{layer}.{name}.weight", weights[pre + hf + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
