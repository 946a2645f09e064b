"""CUDA-graph decoding for a causal Mamba LM: one graph replay per generated token (or per several).

At batch 1 a decode step launches dozens of tiny kernels; launched one by one from Python the step
is bound by launch overhead, not by the GPU. ``GraphedStep`` records the step once into a
``torch.cuda.CUDAGraph`` over static buffers (the token ids, the recurrent cache, the logits) and
replays it. Sampling is recorded into the same graph and writes the drawn token straight back into
the ids buffer and into a token buffer, so ``generate`` replays graphs back to back with no host
work between tokens.

The step itself is either the model's own ``step`` (any backbone that has one) or, by default when
the model is a plain Mamba LM on CUDA, ``FusedMambaStep``: two fused Triton kernels per layer.
"""
from __future__ import annotations

from typing import Optional

import torch


def _sample_next():
    from seqmamba.heads.lm import sample_next  # the one definition of top-k / top-p filtering
    return sample_next


class GraphedStep:
    """A captured decode step of ``model`` for a fixed batch size.

    fused: "auto" (fused Triton step when the model supports it), True, or False (model.step).
    temperature / top_k / top_p: the sampler recorded into the graph (None temperature: logits
        only, no sampling; 0: greedy). Plain temperature sampling on the fused path runs inside
        the fused head kernel (Gumbel-max on Philox noise keyed by ``seed``); top-k / top-p use
        the model's ``sample_next`` (torch ops on the default CUDA generator; multinomial is
        capturable in torch 2.11) inside the graph.
    steps_per_replay: decode steps recorded into one graph (needs a sampler, since each step's
        input is the previous step's sample). More steps per replay amortise the replay launch.
    max_tokens: size of the token buffer that ``generate`` fills.
    """

    def __init__(self, model, batch_size: int, device=None, dtype: Optional[torch.dtype] = None, *,
                 fused="auto", temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, steps_per_replay: int = 1, max_tokens: int = 4096,
                 seed: int = 0):
        device = torch.device(device) if device is not None else next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"GraphedStep needs a CUDA device, got {device}")
        if steps_per_replay < 1 or (steps_per_replay > 1 and temperature is None):
            raise ValueError("steps_per_replay > 1 needs a sampler (set temperature, 0 = greedy)")
        if temperature is not None and temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.model, self.batch, self.device = model, batch_size, device
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.steps_per_replay, self.seed = steps_per_replay, seed
        self.cache = model.allocate_cache(batch_size, device=device, dtype=dtype)
        self.ids = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch_size, max_tokens, dtype=torch.long, device=device)
        self.counter = torch.zeros(batch_size, dtype=torch.int32, device=device)

        from .mamba_decode_triton import FusedMambaStep, fused_step_unsupported
        why = fused_step_unsupported(model)
        if fused == "auto":
            fused = why is None
        elif fused and why:
            raise ValueError(f"fused decode: {why}")
        self.fused = FusedMambaStep(model, batch_size) if fused else None
        self.graph = self._capture()

    # ---- one step, as recorded --------------------------------------------------------------------
    def _one_step(self) -> torch.Tensor:
        simple = self.top_k is None and (self.top_p is None or self.top_p >= 1.0)
        if self.fused is not None and self.temperature is not None and simple:
            # plain temperature / greedy sampling happens inside the fused head kernel
            return self.fused(self.ids, self.cache, (self.ids, self.tokens, self.counter,
                                                     self.temperature, self.seed))
        if self.fused is not None:
            logits = self.fused(self.ids, self.cache)
        else:
            logits = self.model.step(self.ids, self.cache)
        if self.temperature is not None:
            self._record(_sample_next()(logits, self.temperature, self.top_k, self.top_p))
        return logits

    def _record(self, token: torch.Tensor) -> None:
        """ids <- token; tokens[b, counter[b]] <- token; counter += 1 (all on the device)."""
        self.ids.copy_(token)
        col = self.counter.long().clamp_(max=self.tokens.shape[1] - 1)[:, None]
        self.tokens.scatter_(1, col, token[:, None])
        self.counter += 1

    def _capture(self) -> torch.cuda.CUDAGraph:
        state = [t.clone() for t in self._state_tensors()]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(2):  # compile the kernels and let libraries allocate their workspaces
                self._one_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            for _ in range(self.steps_per_replay):
                self.logits = self._one_step()
        for t, saved in zip(self._state_tensors(), state):  # undo the warm-up steps
            t.copy_(saved)
        self.cache.seqlen_offset = 0
        return graph

    def _state_tensors(self):
        for layer in self.cache.layers:
            yield layer.conv_state
            yield layer.ssm_state
        yield self.ids
        yield self.tokens
        yield self.counter

    # ---- use --------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty cache, token buffer and counters (tensor addresses kept for the graph)."""
        self.cache.reset()
        self.tokens.zero_()
        self.counter.zero_()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Advance every sequence by ``ids`` (B,) and return the logits (B, vocab) of the next
        token. The returned tensor is the graph's static buffer: copy it to keep it."""
        if self.steps_per_replay != 1:
            raise ValueError("step() needs steps_per_replay=1")
        self.ids.copy_(ids)
        self.graph.replay()
        self.cache.seqlen_offset += 1
        return self.logits

    def replay(self) -> None:
        """Run ``steps_per_replay`` steps from the ids buffer (each feeding the next sample)."""
        self.graph.replay()
        self.cache.seqlen_offset += self.steps_per_replay

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """(B, L0) prompt -> (B, max_new_tokens) sampled continuation (needs a sampler).

        The prompt fills the cache in one parallel pass; each replay then samples and feeds
        tokens with no host round trip."""
        if self.temperature is None:
            raise ValueError("generate() needs a sampler: construct with temperature (0 = greedy)")
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] != self.batch or prompt_ids.shape[1] == 0:
            raise ValueError(f"prompt_ids must be ({self.batch}, length >= 1), got "
                             f"{tuple(prompt_ids.shape)}")
        if max_new_tokens > self.tokens.shape[1]:
            raise ValueError(f"max_new_tokens={max_new_tokens} > max_tokens={self.tokens.shape[1]}")
        self.reset()
        if max_new_tokens <= 0:
            return self.tokens[:, :0].clone()
        hidden = self.model.backbone(prompt_ids.to(self.device), cache=self.cache)[:, -1]
        logits = self.model.logits_from_hidden(hidden)
        self._record(_sample_next()(logits, self.temperature, self.top_k, self.top_p))
        remaining = max_new_tokens - 1
        for _ in range(-(-remaining // self.steps_per_replay)):
            self.replay()
        return self.tokens[:, :max_new_tokens].clone()
