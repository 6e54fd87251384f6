"""Pruning: importance statistics (score), block removal and healing, the one pipeline that
runs score -> select -> remove -> heal, and the sweep over keep values."""
