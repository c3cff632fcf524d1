"""lm-evaluation-harness's `local-completions` model against the real server, on a small
multiple-choice log-likelihood task whose data ships in benchmarks/lm_eval_task (no internet):
every log-likelihood it gets must equal transformers' on the same model and tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TASK = "deploylab_mini_mc"


@pytest.fixture(scope="module")
def hf_model() -> Any:
    """transformers' Llama sharing the weights of the GGUF model the server serves."""
    from tests.smol import smol_model

    from deploylab.engine.models.hf_interop import transformers_twin

    return transformers_twin(smol_model(), eos_token_id=2, bos_token_id=1)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """On the shared 2-core machine a second OpenMP thread mostly waits for a busy core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(900)  # about a minute alone; the shared 2-core machine can be 4x slower
def test_lm_eval_loglikelihoods_equal_transformers(
    server_factory: Any,
    hf_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_torch_thread: None,
) -> None:
    # the exact float path: transformers runs the dequantized weights in float32
    server = server_factory("--quantization", "none")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.chdir(ROOT)  # the task's data path is relative to the repository root
    import lm_eval
    from lm_eval.tasks import TaskManager
    from tests.smol import smol_tokenizer

    tokenizer = smol_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")  # lm-eval tokenizes with it, locally
    args = (
        f"base_url={server.url}/v1/completions,model=smollm2-135m-instruct,"
        f"tokenizer={tmp_path / 'tok'},tokenizer_backend=huggingface,max_retries=1"
    )
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=[TASK],
        task_manager=TaskManager(  # only our task: indexing the built-in ones takes 15 s
            include_path=str(ROOT / "benchmarks" / "lm_eval_task"), include_defaults=False
        ),
        log_samples=True,
    )
    assert out is not None
    samples = out["samples"][TASK]
    assert len(samples) == 16
    correct = 0
    for sample in samples:
        ours, theirs = [], []
        for i, (context, continuation) in enumerate(sample["arguments"]):
            ctx = tokenizer.encode(context, add_special_tokens=False)
            whole = tokenizer.encode(context + continuation, add_special_tokens=False)
            with torch.inference_mode():
                logits = hf_model(torch.tensor([whole])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            ref = sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
            ll = float(sample["resps"][i][0][0])
            assert ll == pytest.approx(ref, abs=2e-3), (context, continuation)
            assert ll < 0  # the old server gave 0 for every choice
            ours.append(ll)
            theirs.append(ref)
        assert ours.index(max(ours)) == theirs.index(max(theirs))
        correct += int(theirs.index(max(theirs)) == sample["doc"]["answer"])
    assert out["results"][TASK]["acc,none"] == pytest.approx(correct / 16)
