"""Blueprints, one module per endpoint family."""

from __future__ import annotations

from flask import Blueprint


def blueprints() -> list[Blueprint]:
    from api.routes import (
        batches,
        compat,
        files,
        generation,
        health,
        jobs,
        metrics,
        models,
        pooling,
        responses,
        websocket,
    )

    return [
        health.bp,
        models.bp,
        generation.bp,
        pooling.bp,
        jobs.bp,
        compat.bp,
        metrics.bp,
        websocket.bp,
        responses.bp,
        files.bp,
        batches.bp,
    ]
