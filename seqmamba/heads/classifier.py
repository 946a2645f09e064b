"""Sequence classification head: pooled backbone features -> linear -> class logits."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SeqMambaModel, pool


class MambaClassifier(SeqMambaModel):
    """config.head == "classification": pools the final hidden states (config.pooling: "last"
    = last real token, "mean" = mean over real tokens) and maps them to config.num_classes."""

    def __init__(self, config, tokenizer=None):
        super().__init__(config, tokenizer)
        if self.config.num_classes is None:
            raise ValueError("MambaClassifier needs config.num_classes")
        self.classifier = nn.Linear(self.config.d_model, self.config.num_classes)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None):
        """Logits (B, num_classes); with labels (B,) returns (logits, cross-entropy loss).
        Sequences of different lengths are padded on the right, with attention_mask marking
        real tokens."""
        hidden = self.backbone(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        logits = self.classifier(pool(hidden, attention_mask, self.config.pooling))
        if labels is None:
            return logits
        return logits, F.cross_entropy(logits.float(), labels)
