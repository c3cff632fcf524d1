"""vLLM's sleep-mode endpoints (`--enable-sleep-mode`): `POST /sleep`, `POST /wake_up`,
`GET /is_sleeping`, each for one model (`model` parameter) or, without it, for all."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from deploylab.server.errors import APIError
from deploylab.server.residency import RESIDENT, ResidencyManager, ServedModel


def install_sleep_routes(app: FastAPI, state: Any) -> None:
    """Add the three routes; `state.residency` holds the models once they are loaded."""

    def manager() -> ResidencyManager:
        if state.draining:
            raise APIError(503, "The server is shutting down; retry on another replica.")
        if state.residency is None:
            raise APIError(503, state.load_error or "The models are still loading; retry shortly.")
        residency: ResidencyManager = state.residency
        return residency

    def targets(m: ResidencyManager, model: str | None) -> list[ServedModel]:
        return list(m.models.values()) if model is None else [m.resolve(model)]

    @app.post("/sleep")
    async def sleep(level: int = 1, model: str | None = None) -> dict[str, Any]:
        if level not in (1, 2):
            raise APIError(400, f"level must be 1 or 2, got {level}.", "level")
        m = manager()
        done = []
        for served in targets(m, model):
            await m.sleep_model(served, level)
            done.append({"model": served.name, "state": served.state})
        return {"models": done}

    @app.post("/wake_up")
    async def wake_up(model: str | None = None) -> dict[str, Any]:
        m = manager()
        done = []
        for served in targets(m, model):
            await m.wake_model(served)
            done.append({"model": served.name, "state": served.state})
        return {"models": done}

    @app.get("/is_sleeping")
    async def is_sleeping(model: str | None = None) -> dict[str, Any]:
        m = manager()
        chosen = m.default if model is None else m.resolve(model)
        return {
            "is_sleeping": chosen.state != RESIDENT,
            "model": chosen.name,
            "state": chosen.state,
        }
