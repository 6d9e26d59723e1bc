"""Prefect flows that run the DVC stages (no pipeline logic of their own)."""
