"""Multi-LoRA on the server: the request's `model` picks an adapter (vLLM's convention),
`/v1/models` lists adapters with their `parent`, and runtime load/unload endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from deploylab.errors import ModelLoadError, ModelNotFoundError
from deploylab.server.errors import APIError
from deploylab.server.protocol import now


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/load_lora_adapter."""

    lora_name: str
    lora_path: str


class UnloadLoraAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/unload_lora_adapter."""

    lora_name: str
    lora_int_id: int | None = None


def _loras(state: Any) -> list[str]:
    list_loras = getattr(state.engine, "list_loras", None)  # engines without LoRA: none
    return list(list_loras()) if list_loras is not None else []


def resolve_model(state: Any, model: str | None) -> str | None:
    """The LoRA adapter a request's `model` names: None for the base model (or no model),
    the adapter's name, or a 404 OpenAI-style error for an unknown name."""
    if model is None or model == state.served_model_name:
        return None
    loras = _loras(state)
    if model in loras:
        return model
    served = ", ".join([state.served_model_name, *loras])
    raise APIError(
        404, f"The model '{model}' does not exist; this server serves: {served}.", "model"
    )


def lora_model_cards(state: Any) -> list[dict[str, Any]]:
    """The /v1/models entries of the loaded adapters (vLLM's fields: `root`, `parent`)."""
    engine = state.engine
    cards = []
    for name in _loras(state):
        cards.append(
            {
                "id": name,
                "object": "model",
                "created": now(),
                "owned_by": "deploylab",
                "root": engine.lora_path(name),
                "parent": state.served_model_name,
                "max_model_len": engine.max_model_len,
            }
        )
    return cards


def install_lora_routes(app: FastAPI, state: Any) -> None:
    """POST /v1/load_lora_adapter and /v1/unload_lora_adapter (404 unless the server was
    started with --allow-runtime-lora)."""

    def check() -> Any:
        if not state.allow_runtime_lora:
            raise APIError(
                404,
                "Runtime LoRA loading is off; start the server with --allow-runtime-lora.",
            )
        if state.engine is None:
            raise APIError(503, state.load_error or "The model is still loading; retry shortly.")
        return state.engine

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoraAdapterRequest) -> PlainTextResponse:
        engine = check()
        if body.lora_name == state.served_model_name or body.lora_name in _loras(state):
            raise APIError(
                400, f"The LoRA adapter '{body.lora_name}' has already been loaded.", "lora_name"
            )
        loop = asyncio.get_running_loop()
        try:  # reading the files runs off the event loop
            await loop.run_in_executor(None, engine.add_lora, body.lora_name, body.lora_path)
        except (ModelLoadError, ModelNotFoundError) as exc:
            raise APIError(400, str(exc), "lora_path") from None
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> PlainTextResponse:
        engine = check()
        try:
            engine.remove_lora(body.lora_name)
        except ModelNotFoundError as exc:
            raise APIError(404, str(exc), "lora_name") from None
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
