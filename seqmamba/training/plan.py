"""The step plan of a run: which sequence length and batch each optimizer step uses, and how a
global batch is split into per-device micro-batches (gradient accumulation).

Sequence-length warmup (HyenaDNA; Mamba paper App. E.3) keeps the tokens per optimizer step
constant while the length grows and the batch shrinks. With a fixed number of tokens per forward
pass (``micro_batch_tokens``) the accumulation factor is then the same in every stage, which is
what Lightning's ``accumulate_grad_batches`` needs.

``keep="batch"`` is the other warmup (species classification, Mamba paper App. E.3.4): the
number of sequences per step stays fixed and the tokens per step grow with the length. The
accumulation factor is then set by the stage with the most tokens and every stage uses the same
number of sequences per forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError
from .config import Stage

__all__ = ["PlannedStage", "StagePlan"]


@dataclass(frozen=True)
class PlannedStage:
    index: int
    seq_len: int
    batch_size: int   # sequences per optimizer step, all devices together
    micro_batch: int  # sequences per device per forward pass
    first_step: int   # 0-based index of the stage's first optimizer step
    steps: int        # optimizer steps in this stage (within max_steps)

    @property
    def end_step(self) -> int:
        return self.first_step + self.steps


class StagePlan:
    def __init__(self, stages: list[Stage], max_steps: int, tokens_per_step: int | None = None,
                 micro_batch_tokens: int | None = None, world_size: int = 1, keep: str = "tokens"):
        if keep not in ("tokens", "batch"):
            raise ValueError(f"keep must be 'tokens' or 'batch', got {keep!r}")
        if max_steps < 1:
            raise ConfigError(f"trainer.max_steps: must be >= 1, got {max_steps}")
        self.max_steps, self.world_size = max_steps, world_size
        batches = []
        for i, st in enumerate(stages):
            where = f"schedule.stages[{i}]"
            if st.batch_size is not None:
                b = st.batch_size
            elif tokens_per_step is not None:
                if tokens_per_step % st.seq_len:
                    raise ConfigError(f"{where}.seq_len: trainer.tokens_per_step={tokens_per_step} "
                                      f"is not a multiple of seq_len={st.seq_len}")
                b = tokens_per_step // st.seq_len
            else:
                raise ConfigError(f"{where}.batch_size: required when trainer.tokens_per_step is not set")
            if tokens_per_step is not None and b * st.seq_len != tokens_per_step:
                raise ConfigError(f"{where}.batch_size: {b} x seq_len {st.seq_len} = "
                                  f"{b * st.seq_len} tokens, but trainer.tokens_per_step is "
                                  f"{tokens_per_step}")
            if b % world_size:
                raise ConfigError(f"{where}.batch_size: {b} sequences cannot be split evenly over "
                                  f"{world_size} devices")
            batches.append(b)
        tokens = [b * st.seq_len for b, st in zip(batches, stages)]
        if keep == "batch" and len(set(batches)) > 1:
            i = next(i for i, b in enumerate(batches) if b != batches[0])
            raise ConfigError(f"schedule.stages[{i}].batch_size: this warmup keeps the batch constant; "
                              f"this stage has {batches[i]} sequences, stage 0 has {batches[0]}")
        if keep == "tokens" and len(set(tokens)) > 1:
            i = next(i for i, t in enumerate(tokens) if t != tokens[0])
            raise ConfigError(f"schedule.stages[{i}]: length warmup keeps tokens per step constant; "
                              f"this stage has {tokens[i]} (batch {batches[i]} x {stages[i].seq_len}), "
                              f"stage 0 has {tokens[0]}")
        self.tokens_per_step = max(tokens)  # the same in every stage unless keep="batch"
        per_device = self.tokens_per_step // world_size
        micro = min(micro_batch_tokens or per_device, per_device)
        if per_device % micro:
            raise ConfigError(f"trainer.micro_batch_tokens: {micro} does not divide the "
                              f"{per_device} tokens each device processes per step")
        self.accumulate = per_device // micro
        self.stages: list[PlannedStage] = []
        first = 0
        for i, (st, b) in enumerate(zip(stages, batches)):
            if first >= max_steps:
                break  # stages after max_steps never run (e.g. a short test run of a long recipe)
            per_dev = b // world_size
            if per_dev % self.accumulate:
                raise ConfigError(f"trainer.micro_batch_tokens: {micro} tokens is less than one "
                                  f"sequence of schedule.stages[{i}] (seq_len {st.seq_len})")
            steps = max_steps - first if (st.steps is None or i == len(stages) - 1) else st.steps
            steps = min(steps, max_steps - first)
            self.stages.append(PlannedStage(i, st.seq_len, b, per_dev // self.accumulate, first, steps))
            first += steps
        if first < max_steps:  # the last stage runs until the end
            last = self.stages[-1]
            self.stages[-1] = PlannedStage(last.index, last.seq_len, last.batch_size,
                                           last.micro_batch, last.first_step,
                                           max_steps - last.first_step)

    @property
    def total_micro_batches(self) -> int:
        """Micro-batches each device processes over the whole run."""
        return self.max_steps * self.accumulate

    @property
    def final_seq_len(self) -> int:
        return self.stages[-1].seq_len

    def tokens_through(self, step: int) -> int:
        """Tokens in optimizer steps 1..``step`` (all devices)."""
        return sum(st.batch_size * st.seq_len * min(max(step - st.first_step, 0), st.steps)
                   for st in self.stages)

    def stage_at(self, step: int) -> PlannedStage:
        """The stage of 0-based optimizer step ``step``."""
        for st in self.stages:
            if step < st.end_step:
                return st
        return self.stages[-1]

    def describe(self) -> list[str]:
        most = " (at most)" if len({st.batch_size * st.seq_len for st in self.stages}) > 1 else ""
        lines = [f"{self.tokens_per_step} tokens/step{most} = {self.world_size} device(s) x "
                 f"{self.accumulate} accumulation x micro-batch"]
        for st in self.stages:
            lines.append(f"  steps {st.first_step + 1:>7}-{st.end_step:<7} seq_len {st.seq_len:>8}  "
                         f"batch {st.batch_size:>6}  micro-batch {st.micro_batch}")
        return lines
