"""Prefect flows (orchestration only: they wire ``tasks``) and the ``unlearnflow`` CLI."""
