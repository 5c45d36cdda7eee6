"""Intric backend (compact)."""
