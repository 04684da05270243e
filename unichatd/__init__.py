"""unichatd: one multiplexed WebSocket per user for all their chat rooms."""

__version__ = "0.1.0"
