"""Tokenizers built from scratch (chapter 01): characters, byte-level BPE (GPT-2) and WordPiece (BERT)."""

from .bpe import BPETokenizer, PretrainedBPE
from .char import CharTokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ["BPETokenizer", "PretrainedBPE", "CharTokenizer", "WordPieceTokenizer"]
