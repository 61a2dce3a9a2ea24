"""Kaizen engine (placeholder while building)."""
