"""Language-model head: next-token logits, recurrent decoding and sampling."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SeqMambaModel

# Below this many new tokens ``generate`` stays eager: recording graphs costs more than it saves.
GRAPH_MIN_NEW_TOKENS = 64


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None):
    """Sample token ids (B,) from logits (B, V). temperature 0 = greedy."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the most
        # likely token is therefore always kept.
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class MambaLM(SeqMambaModel):
    """Backbone + linear LM head (tied to the input embedding when config.tie_embeddings)."""

    def __init__(self, config, tokenizer=None):
        super().__init__(config, tokenizer)
        cfg = self.config
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        # The padded vocabulary rows exist for matmul alignment only; callers never see them.
        return self.lm_head(hidden)[..., : self.config.vocab_size]

    def forward(self, input_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                cache=None, inputs_embeds: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None):
        """Logits (B, L, vocab_size).

        labels (B, L): the target of each position, already shifted by the caller (typically
            input_ids = seq[:, :-1], labels = seq[:, 1:]); -100 is ignored. When given, returns
            (logits, mean cross-entropy loss).
        cache: fill / continue a recurrent cache (see allocate_cache) with this chunk.
        """
        hidden = self.backbone(input_ids, inputs_embeds=inputs_embeds, cache=cache,
                               attention_mask=attention_mask)
        logits = self.logits_from_hidden(hidden)
        if labels is None:
            return logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=-100)
        return logits, loss

    # ---- recurrent inference -------------------------------------------------------------------
    def allocate_cache(self, batch_size: int, device=None, dtype: Optional[torch.dtype] = None):
        return self.backbone.allocate_cache(batch_size, device=device, dtype=dtype)

    def step(self, input_ids: torch.Tensor, cache) -> torch.Tensor:
        """One token per sequence: input_ids (B,) -> next-token logits (B, vocab_size)."""
        return self.logits_from_hidden(self.backbone.step(input_ids, cache))

    @torch.no_grad()  # not inference_mode: the result must stay usable in autograd later
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 generator: Optional[torch.Generator] = None,
                 callback: Optional[Callable[[int, torch.Tensor], Optional[bool]]] = None,
                 graph: Optional[bool] = None):
        """Sample a continuation of each prompt: (B, L0) -> (B, L0 + max_new_tokens).

        The prompt is consumed in one parallel pass that fills the recurrent cache, then one
        ``step`` per new token. ``callback(i, tokens)`` runs after new token i (tokens (B,));
        returning True stops early (the result is then shorter). A 1-D prompt gives a 1-D result.

        graph: decode through CUDA graphs (``seqmamba.kernels.decode_graph``): None (default)
            when the model is on CUDA and at least GRAPH_MIN_NEW_TOKENS tokens are asked for
            (recording the graphs costs more than it saves on short runs), True (an error when
            not possible), False (never). On CPU nothing changes.

        Randomness: eagerly, and on the graphed path when ``generator`` or ``callback`` is
        given, every token is drawn on the host side by ``sample_next`` from ``generator`` (or
        torch's default one), exactly as on CPU; the graphs then only run the model's step.
        Otherwise the graphed path samples inside the graph with the same distribution
        (top-k/top-p filtering included) but its own random stream: Gumbel-max noise keyed by a
        seed drawn from torch's default CUDA generator, so ``torch.manual_seed`` still makes
        the output reproducible, while the tokens differ from the eager path's.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        squeeze = prompt_ids.dim() == 1
        prompt = prompt_ids[None] if squeeze else prompt_ids
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(f"prompt_ids must be (batch, length >= 1), got shape "
                             f"{tuple(prompt_ids.shape)} (start from a BOS token for no prompt)")
        prompt = prompt.to(self.device)
        batch, L0 = prompt.shape
        out = torch.empty(batch, L0 + max_new_tokens, dtype=torch.long, device=prompt.device)
        out[:, :L0] = prompt
        if max_new_tokens == 0:
            return out[0] if squeeze else out

        on_device = generator is None and callback is None
        decoder = self._graph_decoder(graph, batch, max_new_tokens, temperature, top_k, top_p,
                                      on_device)
        if decoder is not None and on_device:
            out[:, L0:] = decoder.generate(prompt, max_new_tokens)
            return out[0] if squeeze else out
        if decoder is not None:
            cache, step = decoder.cache, decoder.step
        else:
            cache = self.allocate_cache(batch)
            step = lambda token: self.step(token, cache)  # noqa: E731
        hidden = self.backbone(prompt, cache=cache)[:, -1]  # only the last position's logits
        logits = self.logits_from_hidden(hidden)
        end = L0 + max_new_tokens
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)
            out[:, L0 + i] = token
            if callback is not None and callback(i, token) is True:
                end = L0 + i + 1
                break
            if i + 1 < max_new_tokens:
                logits = step(token)
        out = out[:, :end]
        return out[0] if squeeze else out

    def _graph_decoder(self, graph: Optional[bool], batch: int, max_new_tokens: int,
                       temperature: float, top_k, top_p, sample_on_device: bool):
        """A graphed decoder for ``generate`` (None: decode eagerly). With sample_on_device it
        samples inside the graphs; otherwise it only runs steps (logits out)."""
        if graph is False or (graph is None and max_new_tokens < GRAPH_MIN_NEW_TOKENS):
            return None
        from seqmamba.kernels.decode_graph import graphed_decoder_or_none

        def settings():
            if not sample_on_device:
                return {}
            seed = int(torch.randint(0, 2 ** 62, (1,), device=self.device).item())
            return dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                        max_tokens=max_new_tokens)
        return graphed_decoder_or_none(self, batch, settings, required=bool(graph),
                                       option="graph=True", stacklevel=3)
