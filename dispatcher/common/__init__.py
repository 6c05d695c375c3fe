"""Helpers shared by the dispatcher and node agents (clock, tasks, logs, health)."""
