"""Multi-LoRA through `deploylab serve`: real server on loopback, the official openai client,
real peft adapters of the real model."""

from __future__ import annotations

import concurrent.futures
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from deploylab.engine import AsyncEngine, EngineConfig, LLMEngine

from .conftest import MODEL, serve_in_thread


@dataclass
class Url:
    """Where the in-process server listens."""

    url: str


peft = pytest.importorskip("peft")
N_NEW = 6
PROMPT = "The best thing about the ocean is"


def _adapter(
    model: Any, root: Path, name: str, rank: int, targets: list[str], seed: int
) -> tuple[Path, Any]:
    from deploylab.engine.models.hf_interop import transformers_twin

    twin = transformers_twin(model)
    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False
    )
    torch.manual_seed(seed)
    pm = peft.get_peft_model(twin, config)
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "lora_B" in pname:
                p.normal_(0.0, 0.5)
    pm.save_pretrained(str(root / name))
    return root / name, pm.eval()


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.smol import smol_model, smol_path, smol_tokenizer

    path, model, tok = smol_path(), smol_model(), smol_tokenizer()
    root = tmp_path_factory.mktemp("loras")
    ids = tok.encode(PROMPT)
    adapters = {
        "poet": _adapter(model, root, "poet", 8, ["q_proj", "v_proj"], 1),
        "pirate": _adapter(model, root, "pirate", 4, ["gate_proj", "up_proj", "down_proj"], 2),
        "late": _adapter(model, root, "late", 16, ["o_proj", "k_proj"], 3),
    }
    from deploylab.engine.models.hf_interop import transformers_twin

    refs: dict[str | None, Any] = {name: pm for name, (_, pm) in adapters.items()}
    refs[None] = transformers_twin(model)
    expected = {}
    with torch.no_grad():
        for name, hf in refs.items():
            seq = list(ids)
            for _ in range(N_NEW):
                seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
            expected[name] = tok.decode(seq[len(ids) :])
    assert len(set(expected.values())) == 4, "adapters must change the answer"
    # The real app on loopback around an engine sharing the weights loaded here (a second
    # process would load the model again); `--lora` flags themselves: test_bad_lora_flag.
    config = EngineConfig(
        model=str(path), device="cpu", dtype="float32", kv_cache_gib=0.1, max_num_seqs=8,
        lora_modules={n: str(adapters[n][0]) for n in ("poet", "pirate")}, max_loras=2,
    )  # fmt: skip
    engine = AsyncEngine(engine=LLMEngine(config, model=model, tokenizer=tok))
    with serve_in_thread(engine, allow_runtime_lora=True) as url:
        paths = {n: p for n, (p, _) in adapters.items()}
        yield {"server": Url(url), "expected": expected, "paths": paths, "ids": ids}


def client(srv: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)


def complete(srv: Any, model: str, ids: list[int]) -> Any:
    return client(srv).completions.create(
        model=model, prompt=ids, max_tokens=N_NEW, temperature=0, extra_body={"ignore_eos": True}
    )


def test_models_lists_adapters_with_parent(lora_setup: dict[str, Any]) -> None:
    cards = {m.id: m for m in client(lora_setup["server"]).models.list().data}
    assert set(cards) == {MODEL, "poet", "pirate"}
    assert cards["poet"].parent == MODEL and cards["pirate"].root == str(
        lora_setup["paths"]["pirate"]
    )


def test_model_field_picks_the_adapter_in_mixed_batches(lora_setup: dict[str, Any]) -> None:
    srv, ids, expected = lora_setup["server"], lora_setup["ids"], lora_setup["expected"]
    names = [MODEL, "poet", "pirate", "poet", MODEL, "pirate"]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        outs = list(pool.map(lambda n: complete(srv, n, ids), names))
    for name, out in zip(names, outs, strict=True):
        assert out.model == name
        assert out.choices[0].text == expected[None if name == MODEL else name]


def test_unknown_adapter_is_an_openai_404(lora_setup: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        complete(lora_setup["server"], "nobody", lora_setup["ids"])
    body: Any = info.value.body
    assert "'nobody' does not exist" in body["message"] and body["param"] == "model"


def test_runtime_load_and_unload(lora_setup: dict[str, Any], tmp_path: Path) -> None:
    srv, ids = lora_setup["server"], lora_setup["ids"]
    late = str(lora_setup["paths"]["late"])
    r = httpx.post(f"{srv.url}/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": late})
    assert r.status_code == 200, r.text
    assert complete(srv, "late", ids).choices[0].text == lora_setup["expected"]["late"]
    r = httpx.post(f"{srv.url}/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": late})
    assert r.status_code == 400 and "already been loaded" in r.json()["error"]["message"]
    r = httpx.post(f"{srv.url}/v1/unload_lora_adapter", json={"lora_name": "late"})
    assert r.status_code == 200
    with pytest.raises(openai.NotFoundError):
        complete(srv, "late", ids)
    r = httpx.post(f"{srv.url}/v1/unload_lora_adapter", json={"lora_name": "late"})
    assert r.status_code == 404
    # A broken adapter is refused with the reason; the server keeps serving.
    broken = tmp_path / "broken"
    shutil.copytree(late, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"garbage")
    r = httpx.post(
        f"{srv.url}/v1/load_lora_adapter", json={"lora_name": "b", "lora_path": str(broken)}
    )
    assert r.status_code == 400 and "corrupt" in r.json()["error"]["message"]
    assert complete(srv, "poet", ids).choices[0].text == lora_setup["expected"]["poet"]


def test_lora_metrics(lora_setup: dict[str, Any]) -> None:
    srv = lora_setup["server"]
    complete(srv, "pirate", lora_setup["ids"])
    text = httpx.get(f"{srv.url}/metrics").text
    assert 'vllm:lora_requests_info{max_lora="2"' in text
    loads = [line for line in text.splitlines() if line.startswith("deploylab:lora_loads_total")]
    assert loads and float(loads[0].split()[-1]) >= 2
    assert "deploylab:lora_evictions_total" in text


def test_runtime_loading_is_off_by_default() -> None:
    from deploylab.engine.models.loader import init_random_model
    from deploylab.engine.models.presets import get_preset

    tiny = init_random_model(get_preset("tiny"))
    config = EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.01, enable_lora=True)
    engine = AsyncEngine(engine=LLMEngine(config, model=tiny, tokenizer=None))
    with serve_in_thread(engine) as url:
        body = {"lora_name": "x", "lora_path": "/"}
        r = httpx.post(f"{url}/v1/load_lora_adapter", json=body)
        assert r.status_code == 404 and "--allow-runtime-lora" in r.json()["error"]["message"]


def test_bad_lora_flag_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (a subprocess would import torch again only to print the error)."""
    from deploylab.cli import main

    for flag, message in (("poet", "NAME=PATH"), (f"p={tmp_path / 'nope'}", "not a directory")):
        code = main(["serve", "--lora", flag])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
