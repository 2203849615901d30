"""Blueprints, one module per endpoint family."""

from __future__ import annotations

from flask import Blueprint


def blueprints() -> list[Blueprint]:
    from api.routes import generation, health, models, pooling

    return [health.bp, models.bp, generation.bp, pooling.bp]
