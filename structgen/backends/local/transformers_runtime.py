"""The transformers runtime: a Hugging Face causal LM in torch (``[local] runtime =
"transformers"``, and always for a Hugging Face model directory).

Prompts are prefilled against a small LRU of KV caches keyed by token prefix; a batch is
one left-padded cache with an attention mask.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from structgen.backends.base import GenerationRequest
from structgen.backends.local.models import load_model
from structgen.backends.local.runtime import Batch, Runtime, Seq, chat_messages, reusable_prefix
from structgen.constrain.base import TokenizerData
from structgen.errors import BackendUnavailable
from structgen.messages import ToolArguments, tool_arguments

if TYPE_CHECKING:
    import torch

    from structgen.config import LocalConfig
    from structgen.constrain.grammar_cache import GrammarCache


class TransformersRuntime(Runtime):
    kind = "transformers"

    def __init__(self, ref: str, cfg: LocalConfig, grammar_cache: GrammarCache) -> None:
        super().__init__(cfg, grammar_cache)
        start = time.perf_counter()
        self.model, self.tokenizer, self.ref = load_model(
            ref if ref != "default" else None, cache_dir=cfg.model_cache_dir, dtype=cfg.dtype,
            device=cfg.device)
        self.name = self.ref.rstrip("/").rsplit("/", 1)[-1]
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        # prompt and answer must fit the model's positions (a tool turn shortens its prompt)
        self.context_tokens = int(getattr(self.model.config, "max_position_embeddings",
                                          None) or self.context_tokens)
        eos = self.model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        if not eos_ids:
            raise BackendUnavailable(f"model {self.ref} has no end-of-sequence token", "local")
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else eos_ids[0]
        self.tok = TokenizerData(self.tokenizer, self.vocab_size, tuple(eos_ids))
        self.token_bytes = self.tok.token_bytes()
        self.prefix_cache: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        params = inspect.signature(self.model.forward).parameters
        # transformers 5.x renamed past_key_values to cache
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self._derive()
        self.load_s = time.perf_counter() - start

    def render_ids(self, request: GenerationRequest, detail: str) -> list[int]:
        template = getattr(self.tokenizer, "chat_template", None)
        messages, tools = chat_messages(request, template if isinstance(template, str)
                                        else None, self.tool_arguments, detail,
                                        self.cfg.think_prompt)
        if template:
            text = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                      add_generation_prompt=True)
        else:  # a base model: plain concatenation
            text = "\n\n".join(str(m["content"]) for m in messages) + "\n"
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @functools.cached_property
    def tool_arguments(self) -> ToolArguments | None:
        """How the tokenizer's chat template takes earlier tool calls' arguments (None: it
        does not render tool calls and results)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        return tool_arguments(lambda messages: self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True))

    # KV cache ---------------------------------------------------------------------------
    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def copy_cache(self, cache: Any, length: int) -> Any:
        """A copy of the first ``length`` positions of a batch-of-1 cache."""
        out = self.new_cache()
        for i, layer in enumerate(cache.layers):
            out.update(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone(), i)
        return out

    def forward(self, input_ids: torch.Tensor, cache: Any, attention_mask: Any = None,
                position_ids: Any = None) -> torch.Tensor:
        self.forward_passes += 1
        kwargs = {self.cache_kw: cache}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float()

    def prefill(self, seq: Seq) -> tuple[Any, torch.Tensor]:
        """KV cache + last logits for the prompt, reusing the longest cached prefix."""
        import torch

        ids = seq.prompt_ids
        cached, use = reusable_prefix(self.prefix_cache, ids)
        cache = self.copy_cache(cached, use) if cached is not None else self.new_cache()
        logits = self.forward(torch.tensor([ids[use:]]), cache)
        seq.stats["prefill_tokens"] = len(ids) - use
        seq.stats["prefix_cache_hit_tokens"] = use
        seq.stats["forward_passes"] += 1
        if self.cfg.prefix_cache_entries > 0 and self.cfg.prefix_cache_mb > 0:
            self.prefix_cache[tuple(ids)] = self.copy_cache(cache, len(ids))
            self.prefix_cache.move_to_end(tuple(ids))
            limit = self.cfg.prefix_cache_mb << 20
            while (len(self.prefix_cache) > self.cfg.prefix_cache_entries
                   or sum(map(cache_bytes, self.prefix_cache.values())) > limit):
                self.prefix_cache.popitem(last=False)
        return cache, logits

    def begin(self, seqs: list[Seq]) -> tuple[Batch, torch.Tensor]:
        import torch

        caches, rows = [], []
        for seq in seqs:
            cache, logits = self.prefill(seq)
            caches.append(cache)
            rows.append(logits)
        return _TorchBatch(self, caches), torch.cat(rows, 0)


def cache_bytes(cache: Any) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


class _TorchBatch(Batch):
    """One cache for the whole batch, left-padded, with its attention mask."""

    def __init__(self, rt: TransformersRuntime, caches: list[Any]) -> None:
        import torch
        import torch.nn.functional as F

        self.rt = rt
        self.mask: Any = None
        self.valid: Any = None
        if len(caches) == 1:
            self.cache = caches[0]
            return
        lengths = [c.get_seq_length() for c in caches]
        longest = max(lengths)
        merged = rt.new_cache()
        for layer in range(len(caches[0].layers)):
            ks = [F.pad(c.layers[layer].keys, (0, 0, longest - n, 0))
                  for c, n in zip(caches, lengths, strict=True)]
            vs = [F.pad(c.layers[layer].values, (0, 0, longest - n, 0))
                  for c, n in zip(caches, lengths, strict=True)]
            merged.update(torch.cat(ks, 0), torch.cat(vs, 0), layer)
        mask = torch.zeros((len(caches), longest), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, longest - n:] = 1
        self.cache, self.mask, self.valid = merged, mask, torch.tensor(lengths)

    def keep(self, indices: list[int]) -> None:
        import torch

        idx = torch.tensor(indices)
        self.cache.batch_select_indices(idx)
        if self.mask is not None:
            self.mask, self.valid = self.mask[idx], self.valid[idx]

    def step(self, live: list[Seq], fast_forward: bool) -> torch.Tensor:
        import torch

        rt = self.rt
        k = max(len(s.pending) for s in live)
        if len(live) == 1 and self.mask is None:
            s = live[0]
            ids = s.pending
            if fast_forward:
                logits = rt.forward(torch.tensor([ids]), self.cache)
                s.stats["forward_passes"] += 1
            else:
                for t in ids:  # one token per pass: the reference path fast-forward beats
                    logits = rt.forward(torch.tensor([[t]]), self.cache)
                    s.stats["forward_passes"] += 1
            return logits
        b = len(live)
        input_ids = torch.full((b, k), rt.pad_id, dtype=torch.long)
        new_mask = torch.zeros((b, k), dtype=torch.long)
        positions = torch.zeros((b, k), dtype=torch.long)
        for i, s in enumerate(live):
            n = len(s.pending)
            input_ids[i, k - n:] = torch.tensor(s.pending)
            new_mask[i, k - n:] = 1
            start = int(self.valid[i])
            positions[i, k - n:] = torch.arange(start, start + n)
            s.stats["forward_passes"] += 1 if fast_forward else n
        if self.mask is None:  # a batch that started as one sequence never gets here
            raise AssertionError("batched step without an attention mask")
        full = torch.cat([self.mask, new_mask], 1)
        if fast_forward:
            logits = rt.forward(input_ids, self.cache, full, positions)
        else:
            base = self.mask.shape[1]
            for j in range(k):
                logits = rt.forward(input_ids[:, j:j + 1], self.cache, full[:, :base + j + 1],
                                    positions[:, j:j + 1])
        self.valid = self.valid + new_mask.sum(1)
        self.mask = full
        return logits
