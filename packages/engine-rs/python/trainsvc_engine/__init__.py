"""A fast Othello engine with self-play TD(lambda) training (Rust core, Python API)."""

from trainsvc_engine._engine import perft

__all__ = ["perft"]
