"""CUDA-graph decoding for a causal LM: replays of recorded decode steps, sampling included.

At batch 1 a decode step launches dozens of tiny kernels; launched one by one from Python the step
is bound by launch overhead, not by the GPU. A graphed decoder records the step once into a
``torch.cuda.CUDAGraph`` over static buffers (the token ids, the recurrent cache, the logits) and
replays it. Sampling (``DeviceSampler``) is recorded into the same graph and writes the drawn
token straight back into the ids buffer and into a token buffer, so ``generate`` replays graphs
back to back with no host work between tokens.

``GraphedDecoder`` holds what every backbone shares: buffers, capture, the replay schedule. A
subclass says how one step at a given position is recorded and which positions record the same
step (its *phase*): every position for the plain Mamba LM (``GraphedStep``), ``offset mod
prod(pools)`` for the U-Net (``unet_decode_graph.UNetGraphedStep``), whose coarse levels run only
every p1, p1*p2, ... steps. One graph is recorded per phase that is met (lazily), plus, when
sampling, one graph of ``steps_per_replay`` consecutive steps per aligned start phase.
``graphed_decoder(model, ...)`` picks the class for a model.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Hashable, Optional, Sequence, Union

import numpy as np
import torch


def _sample_next():
    from seqmamba.heads.lm import sample_next  # the one definition of top-k / top-p filtering
    return sample_next


def seed_key(seed: Union[int, Sequence[int]]) -> int:
    """A Philox key for ``seed`` (an int or a sequence of ints, e.g. (seed, first clip)): a
    31-bit hash in the high word, leaving the low word to the step counter, so no two
    (seed, step) pairs share a key below 2**32 steps."""
    entropy = [int(s) for s in seed] if isinstance(seed, (tuple, list)) else int(seed)
    return ((int(np.random.SeedSequence(entropy).generate_state(1)[0]) & 0x7FFFFFFF) | 1) << 32


class DeviceSampler:
    """Draws and records the next token of each of ``batch`` rows on the device.

    Per row b: token ~ softmax(filtered logits / temperature) (argmax when temperature is 0, the
    excluded id ``ban_token`` never drawn, top-k then top-p as ``heads.lm.sample_next``); then
    ids[b] <- token (``ids`` is the decoder's input buffer), tokens[b, counter[b]] <- token,
    counter[b] += 1, and with ``loglik`` also loglik[b] += log p(token) under the untempered,
    unfiltered distribution over the non-excluded ids (float64). Samples past ``max_tokens``
    still feed the next step but are not kept.

    On CUDA (Triton; vocab <= MAX_SAMPLE_VOCAB) one kernel does all of it, with Gumbel-max noise
    keyed by (``seed``, step counter): reproducible for a seed. Elsewhere the same steps run as
    torch ops with ``sample_next``'s multinomial on torch's default generator (which CUDA graphs
    can record).
    """

    def __init__(self, vocab_size: int, ids: torch.Tensor, *, temperature: float,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 ban_token: Optional[int] = None, loglik: bool = False, max_tokens: int = 4096,
                 seed: Union[int, Sequence[int]] = 0):
        if temperature is None or temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if ban_token is not None and not 0 <= ban_token < vocab_size:
            raise ValueError(f"ban_token {ban_token} is outside the vocabulary [0, {vocab_size})")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        from .dispatch import use_triton

        batch, dev = ids.shape[0], ids.device
        self.vocab, self.ids, self.batch = vocab_size, ids, batch
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.ban_token, self.track_loglik = ban_token, loglik
        self.tokens = torch.zeros(batch, max_tokens, dtype=torch.long, device=dev)
        self.counter = torch.zeros(batch, dtype=torch.int32, device=dev)
        self.loglik = torch.zeros(batch, dtype=torch.float64, device=dev)
        self.seed = torch.tensor([seed_key(seed)], dtype=torch.int64, device=dev)
        self.use_triton = False
        if use_triton(ids):
            from .decode_sample_triton import MAX_SAMPLE_VOCAB
            self.use_triton = vocab_size <= MAX_SAMPLE_VOCAB
        if ban_token is not None:
            self._ban_index = torch.tensor([ban_token], device=dev)

    def state_tensors(self):
        return (self.tokens, self.counter, self.loglik)

    def reset(self, seed: Union[int, Sequence[int], None] = None) -> None:
        """Empty token buffer, counters and log-likelihoods (addresses kept for the graphs)."""
        self.tokens.zero_()
        self.counter.zero_()
        self.loglik.zero_()
        if seed is not None:
            self.seed.fill_(seed_key(seed))

    def sample(self, logits: torch.Tensor) -> None:
        """Draw from ``logits`` (B, vocab_size), any float dtype, and record the tokens."""
        if logits.shape != (self.batch, self.vocab):
            raise ValueError(f"logits must be ({self.batch}, {self.vocab}), got "
                             f"{tuple(logits.shape)}")
        if self.use_triton:
            from .decode_sample_triton import launch_sample
            return launch_sample(self, logits)
        x = logits.float()
        if self.ban_token is not None:
            x = x.index_fill(-1, self._ban_index, float("-inf"))
        token = _sample_next()(x, self.temperature, self.top_k, self.top_p)
        if self.track_loglik:
            self.loglik += torch.log_softmax(x, -1).gather(1, token[:, None])[:, 0].double()
        self.ids.copy_(token)
        # column counter[b]; past the buffer the token still feeds the next step, kept nowhere
        col = self.counter.long().clamp(max=self.tokens.shape[1] - 1)[:, None]
        fits = self.counter[:, None] < self.tokens.shape[1]
        self.tokens.scatter_(1, col, torch.where(fits, token[:, None], self.tokens.gather(1, col)))
        self.counter += 1


class GraphedDecoder:
    """Recorded decode steps of ``model`` for a fixed batch size (see the module docstring).

    temperature / top_k / top_p / ban_token / loglik / seed: the ``DeviceSampler`` recorded into
        the graphs (None temperature: logits only, no sampling; 0: greedy).
    steps_per_replay: decode steps recorded into one graph for ``advance`` / ``generate`` (needs
        a sampler, since each step's input is the previous step's sample).
    max_tokens: size of the token buffer that ``generate`` fills.
    cuda_graph: False runs the recorded step functions directly instead of replaying graphs
        (same buffers and schedule; for tests on CPU and for debugging).
    """

    cycle = 1  # positions after which the recorded steps repeat (the number of phases)

    def __init__(self, model, batch_size: int, device=None, dtype: Optional[torch.dtype] = None,
                 *, temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, ban_token: Optional[int] = None,
                 loglik: bool = False, max_tokens: int = 4096,
                 seed: Union[int, Sequence[int]] = 0, cuda_graph: bool = True):
        device = torch.device(device) if device is not None else next(model.parameters()).device
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"CUDA-graph decoding needs a CUDA device, got {device}")
        if temperature is None and (top_k is not None or top_p is not None or
                                    ban_token is not None or loglik):
            raise ValueError("top_k / top_p / ban_token / loglik need a sampler: set temperature "
                             "(0 = greedy)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch, self.device, self.cuda_graph = model, batch_size, device, cuda_graph
        self.vocab = model.config.vocab_size
        # Normal (not inference) tensors even when built under inference_mode, so that the
        # in-place updates of later calls work in and out of it.
        with torch.inference_mode(False):
            self.cache = model.allocate_cache(batch_size, device=device, dtype=dtype)
            self.ids = torch.zeros(batch_size, dtype=torch.long, device=device)
            self.logits = torch.zeros(batch_size, self.vocab, dtype=torch.float32, device=device)
            self.sampler = None if temperature is None else DeviceSampler(
                self.vocab, self.ids, temperature=temperature, top_k=top_k, top_p=top_p,
                ban_token=ban_token, loglik=loglik, max_tokens=max_tokens, seed=seed)
        self.steps_per_replay = 1
        self.capture_seconds = 0.0  # host time spent recording graphs so far
        self._pool = torch.cuda.graph_pool_handle() if cuda_graph else None
        self._singles: dict = {}
        self._chunks: dict = {}

    # ---- what a subclass defines ------------------------------------------------------------------
    def _record_step(self, offset: int) -> None:
        """Launch one decode step at position ``offset`` from ``self.ids``: logits into
        ``self.logits`` and, with a sampler, the next token into ``self.ids``."""
        raise NotImplementedError

    def _cache_tensors(self):
        raise NotImplementedError

    def phase(self, offset: int) -> Hashable:
        """Positions with equal phases record identical steps."""
        return ()

    def phase_offset(self, phase: Hashable) -> int:
        """A position of ``phase``."""
        return 0

    # ---- recording ----------------------------------------------------------------------------------
    def _use_fused(self, fused) -> bool:
        """Resolve a subclass's ``fused`` argument ("auto", True or False) for this model."""
        why = fused_decode_unsupported(self.model, self.device)
        if fused == "auto":
            return why is None
        if fused and why:
            raise ValueError(f"fused decode: {why}")
        return bool(fused)

    def _set_steps_per_replay(self, k: int) -> None:
        """k steps per chunk graph; k must divide ``cycle`` or be a multiple of it."""
        if k < 1 or (k > 1 and self.sampler is None):
            raise ValueError("steps_per_replay > 1 needs a sampler (set temperature, 0 = greedy)")
        if self.cycle % k and k % self.cycle:
            raise ValueError(f"steps_per_replay={k} must divide {self.cycle} or be a multiple of it")
        self.steps_per_replay = k
        self.align = min(k, self.cycle)  # a chunk starts at a multiple of this

    def _state_tensors(self):
        yield from self._cache_tensors()
        yield self.ids
        if self.sampler is not None:
            yield from self.sampler.state_tensors()

    def _recorder(self, offsets: list[int]) -> Callable[[], None]:
        def record():
            saved = self.cache.seqlen_offset  # host bookkeeping only; the replays keep it
            for o in offsets:
                self._record_step(o)
            self.cache.seqlen_offset = saved
        return record

    def _capture(self, record: Callable[[], None], warm: Callable[[], None]) -> Callable[[], None]:
        """A CUDA graph of ``record`` (its replay), after running ``warm`` once on a side stream
        (compiles kernels, lets libraries allocate workspaces) and undoing its effect."""
        if not self.cuda_graph:
            return record
        t0 = time.perf_counter()
        current = torch.cuda.current_stream(self.device)
        state = [t.clone() for t in self._state_tensors()]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.inference_mode(), torch.cuda.stream(side):
            warm()
        current.wait_stream(side)
        for t, saved in zip(self._state_tensors(), state):
            t.copy_(saved)
        graph = torch.cuda.CUDAGraph()
        # One memory pool for all graphs: only their own intermediates live in it, and those
        # are dead once a replay ends, so graphs may share them whatever the replay order.
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            record()
        self.capture_seconds += time.perf_counter() - t0
        return graph.replay

    def _single(self, offset: int) -> Callable[[], None]:
        key = self.phase(offset)
        if key not in self._singles:
            record = self._recorder([self.phase_offset(key)])
            self._singles[key] = self._capture(record, record)
        return self._singles[key]

    def _chunk(self, offset: int) -> Callable[[], None]:
        key = offset % self.cycle
        if key not in self._chunks:
            offsets = [key + t for t in range(self.steps_per_replay)]
            warm_keys = {self.phase(o): None for o in offsets}  # each distinct step once
            warm = self._recorder([self.phase_offset(k) for k in warm_keys])
            self._chunks[key] = self._capture(self._recorder(offsets), warm)
        return self._chunks[key]

    def prepare(self, offsets: Sequence[int] = (0,)) -> None:
        """Record now (rather than on first use) the graphs that steps from these positions
        take: the single step of each phase met before the first aligned chunk, and the chunk."""
        for o in offsets:
            while o % self.align:
                self._single(o)
                o += 1
            if self.steps_per_replay > 1:
                self._chunk(o)
            else:
                self._single(o)

    # ---- use --------------------------------------------------------------------------------------
    def reset(self, seed: Union[int, Sequence[int], None] = None) -> None:
        """Empty cache, token buffer and counters (tensor addresses kept for the graphs);
        ``seed`` re-keys the sampler's noise."""
        self.cache.reset()
        if self.sampler is not None:
            self.sampler.reset(seed)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Advance every sequence by ``ids`` (B,) and return the float32 logits (B, vocab) of the
        next token (with a sampler the next token is also drawn). The returned tensor is a
        static buffer that the next step overwrites: copy it to keep it."""
        self.ids.copy_(ids)
        self._single(self.cache.seqlen_offset)()
        self.cache.seqlen_offset += 1
        return self.logits

    def replay(self) -> None:
        """Run ``steps_per_replay`` steps from the ids buffer (each feeding the next sample);
        the position must be a multiple of ``align``."""
        offset = self.cache.seqlen_offset
        if offset % self.align:
            raise ValueError(f"replay() at position {offset}: needs a multiple of {self.align}; "
                             f"use advance()")
        (self._chunk(offset) if self.steps_per_replay > 1 else self._single(offset))()
        self.cache.seqlen_offset += self.steps_per_replay

    def advance(self, n: int, on_progress: Optional[Callable[[int], None]] = None) -> None:
        """Run n sampled steps from the ids buffer: single steps up to an aligned position, then
        chunk graphs, then single steps for the rest. ``on_progress(k)`` after every k steps."""
        if self.sampler is None:
            raise ValueError("advance() needs a sampler: construct with temperature (0 = greedy)")
        k = self.steps_per_replay
        in_flight: list = []
        while n > 0:
            offset = self.cache.seqlen_offset
            steps = k if k > 1 and offset % self.align == 0 and n >= k else 1
            (self._chunk(offset) if steps > 1 else self._single(offset))()
            self.cache.seqlen_offset += steps
            n -= steps
            if on_progress is not None:
                on_progress(steps)
                if self.cuda_graph:  # keep the host at most a few replays ahead of the device
                    event = torch.cuda.Event()
                    event.record()
                    in_flight.append(event)
                    if len(in_flight) > 8:
                        in_flight.pop(0).synchronize()

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int,
                 on_progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """(B, L0) prompt -> (B, max_new_tokens) sampled continuation (needs a sampler).

        The prompt fills the cache in one parallel pass and its last logits give the first
        token; each later token is a graph replay (or part of one) with no host round trip.
        The log-likelihoods, when tracked, are in ``loglik`` afterwards."""
        if self.sampler is None:
            raise ValueError("generate() needs a sampler: construct with temperature (0 = greedy)")
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] != self.batch or prompt_ids.shape[1] == 0:
            raise ValueError(f"prompt_ids must be ({self.batch}, length >= 1), got "
                             f"{tuple(prompt_ids.shape)}")
        if max_new_tokens > self.sampler.tokens.shape[1]:
            raise ValueError(f"max_new_tokens={max_new_tokens} > max_tokens="
                             f"{self.sampler.tokens.shape[1]}")
        self.reset()
        if max_new_tokens <= 0:
            return self.sampler.tokens[:, :0].clone()
        hidden = self.model.backbone(prompt_ids.to(self.device), cache=self.cache)[:, -1]
        self.sampler.sample(self.model.logits_from_hidden(hidden))
        if on_progress is not None:
            on_progress(1)
        self.advance(max_new_tokens - 1, on_progress)
        return self.sampler.tokens[:, :max_new_tokens].clone()

    @property
    def tokens(self) -> torch.Tensor:
        return self.sampler.tokens

    @property
    def loglik(self) -> torch.Tensor:
        """(B,) float64 log-likelihood of the sampled tokens so far (needs loglik=True)."""
        if self.sampler is None or not self.sampler.track_loglik:
            raise ValueError("construct with loglik=True (and a temperature) to track it")
        return self.sampler.loglik


class GraphedStep(GraphedDecoder):
    """Graphed decoding of a plain Mamba LM (any model with ``step``, in fact).

    fused: "auto" (``FusedMambaStep``'s fused Triton kernels when the model supports them),
        True, or False (``model.step``). With a sampler on the fused path the LM-head launch
        also samples (``decode_sample_triton``).
    Other arguments: ``GraphedDecoder``'s; steps_per_replay is any k >= 1.
    """

    def __init__(self, model, batch_size: int, device=None, dtype: Optional[torch.dtype] = None,
                 *, fused="auto", steps_per_replay: Union[int, str] = 1, **kw):
        super().__init__(model, batch_size, device, dtype, **kw)
        self._set_steps_per_replay(16 if steps_per_replay == "auto" and self.sampler is not None
                                   else 1 if steps_per_replay == "auto" else steps_per_replay)
        self.fused = None
        if self._use_fused(fused):
            from .mamba_decode_triton import FusedMambaStep
            with torch.inference_mode(False):
                self.fused = FusedMambaStep(model, batch_size)
            self.logits = self.fused.logits
        self.prepare()

    def _cache_tensors(self):
        for layer in self.cache.layers:
            yield layer.conv_state
            yield layer.ssm_state

    def _record_step(self, offset: int) -> None:
        if self.fused is None:
            self.logits.copy_(self.model.step(self.ids, self.cache))
            if self.sampler is not None:
                self.sampler.sample(self.logits)
            return
        if self.sampler is None or not self.sampler.use_triton:
            self.fused(self.ids, self.cache)
            if self.sampler is not None:
                self.sampler.sample(self.logits)
            return
        self.fused(self.ids, self.cache, self.sampler)  # the head launch samples too


def fused_decode_unsupported(model, device=None) -> Optional[str]:
    """Why the fused Triton decode step cannot run ``model`` (None when it can)."""
    from .dispatch import kernel_mode, triton_available

    device = device or next(model.parameters()).device
    if not triton_available():
        return "triton is not importable"
    if device.type != "cuda" and kernel_mode() != "triton":
        return "the fused kernels run on CUDA (or on CPU with SEQMAMBA_KERNELS=triton and " \
               "TRITON_INTERPRET=1)"
    if kernel_mode() == "torch":
        return "SEQMAMBA_KERNELS=torch"
    from seqmamba.model.unet import UNetBackbone
    if isinstance(getattr(model, "backbone", None), UNetBackbone):
        from .unet_decode_triton import fused_unet_unsupported
        return fused_unet_unsupported(model)
    from .mamba_decode_triton import fused_step_unsupported
    return fused_step_unsupported(model)


def graph_unsupported(model) -> Optional[str]:
    """Why ``graphed_decoder`` cannot decode ``model`` here (None when it can)."""
    if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda":
        return "CUDA-graph decoding needs the model on a CUDA device"
    if getattr(model.config, "bidirectional", False):
        return "bidirectional models cannot decode recurrently"
    if not (hasattr(model, "lm_head") and hasattr(getattr(model, "backbone", None), "step")):
        return "needs a language model whose backbone has a recurrent step"
    return None


def graphed_decoder(model, batch_size: int, **kw) -> GraphedDecoder:
    """The graphed decoder for ``model``'s backbone: ``UNetGraphedStep`` for the U-Net,
    ``GraphedStep`` otherwise; keyword arguments as theirs (steps_per_replay defaults to
    "auto": a chunk per replay sized for the backbone when sampling)."""
    from seqmamba.model.unet import UNetBackbone

    kw.setdefault("steps_per_replay", "auto")
    if isinstance(getattr(model, "backbone", None), UNetBackbone):
        from .unet_decode_graph import UNetGraphedStep
        return UNetGraphedStep(model, batch_size, **kw)
    return GraphedStep(model, batch_size, **kw)


def graphed_decoder_or_none(model, batch_size: int, settings: Callable[[], dict], *,
                            required: bool, option: str, stacklevel: int = 2
                            ) -> Optional[GraphedDecoder]:
    """``graphed_decoder(model, batch_size, **settings())`` where it can run here, else None:
    the one policy of every caller with a graph switch. ``required`` (the caller's switch forced
    on, named ``option`` in the message) turns an unsupported model into a ValueError and a
    failed recording into its exception; otherwise a failed recording is a RuntimeWarning
    (``stacklevel`` counted from the caller) and eager decoding. ``settings`` runs only once
    the model is known to be graphable (callers draw seeds there)."""
    why = graph_unsupported(model)
    if why is not None:
        if required:
            raise ValueError(f"{option}: {why}")
        return None
    try:
        return graphed_decoder(model, batch_size, **settings())
    except Exception as err:  # noqa: BLE001 - a graph that cannot be recorded on this setup
        if required:
            raise
        warnings.warn(f"CUDA-graph decoding unavailable, decoding eagerly: "
                      f"{type(err).__name__}: {err}", RuntimeWarning, stacklevel=stacklevel + 1)
        return None
