"""Tokenizers: DNA (single base, k-mer, raw byte) and audio (mu-law).

Every tokenizer has ``encode`` -> LongTensor, ``decode``, ``encode_batch`` (padding +
attention mask), ``vocab_size``, ``pad_id`` and ``to_config()``; the DNA ones add
``reverse_complement`` (strings) and ``reverse_complement_ids`` (token tensors).
Build one by name with ``get_tokenizer`` or from a stored config with ``tokenizer_from_config``.
torchaudio is imported only when a mu-law tokenizer first encodes or decodes.
"""
from .base import (BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL_TOKENS, PAD_ID, SPECIAL_TOKENS, UNK_ID,
                   Tokenizer, TokenizerError)
from .dna_alphabet import reverse_complement
from .dna_byte import DNAByteTokenizer
from .dna_char import DNACharTokenizer
from .dna_kmer import TAIL_MODES, DNAKmerTokenizer
from .mulaw import MuLawTokenizer
from .registry import TOKENIZERS, available_tokenizers, get_tokenizer, tokenizer_from_config

__all__ = [
    "Tokenizer", "TokenizerError", "DNACharTokenizer", "DNAKmerTokenizer", "DNAByteTokenizer",
    "MuLawTokenizer", "TOKENIZERS", "get_tokenizer", "tokenizer_from_config",
    "available_tokenizers", "reverse_complement", "TAIL_MODES", "SPECIAL_TOKENS", "PAD_ID",
    "BOS_ID", "EOS_ID", "MASK_ID", "UNK_ID", "NUM_SPECIAL_TOKENS",
]
