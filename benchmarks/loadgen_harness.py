"""Drivers for benchmarks/loadgen_accuracy.py: the simulator as a process, our load generator
through its Python API, and GuideLLM through its CLI in its own virtualenv.

Every measurement is reduced to the same per-request numbers for both tools: schedule
lateness (actual send minus scheduled send), TTFT (first token minus actual send), and the
mean inter-token gap of each request, all computed here from the tools' own per-request
records.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.library import load_scenario_file
from deploylab.loadtest.results import Results
from deploylab.loadtest.runner import PreparedRun, execute, prepare_run
from deploylab.loadtest.sim.tokens import render_chat, text_pieces

MODEL = "sim-model"


class SimProcess:
    """`deploylab sim --config FILE --port 0` as a child process."""

    def __init__(self, config_yaml: str, workdir: Path) -> None:
        self.path = workdir / f"sim-{time.monotonic_ns()}.yaml"
        self.path.write_text(config_yaml)
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SimProcess:
        exe = Path(sys.executable).with_name("deploylab")
        self._proc = subprocess.Popen(
            [str(exe), "sim", "--config", str(self.path), "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stderr is not None
        if os.sched_getscheduler(0) == os.SCHED_FIFO:
            # The ruler outranks the tools it measures: under `chrt -f N` the simulator runs at
            # N + 10, so a load generator that saturates the CPUs cannot make the sim late.
            prio = os.sched_getparam(0).sched_priority + 10
            os.sched_setscheduler(self._proc.pid, os.SCHED_FIFO, os.sched_param(prio))
        line = self._proc.stderr.readline()
        match = re.search(r"(http://[\d.]+:\d+)", line)
        if not match:
            raise RuntimeError(f"deploylab sim did not start: {line}")
        self.url = match.group(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(timeout=30)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/sim/stats", timeout=30) as resp:
            return dict(json.load(resp))

    def reset_stats(self) -> None:
        req = urllib.request.Request(self.url + "/sim/reset_stats", data=b"", method="POST")
        urllib.request.urlopen(req, timeout=30).close()


@dataclass
class Measured:
    """Per-request numbers of one load, in milliseconds, for the requests in the window."""

    tool: str
    offered: str
    window_s: float
    lateness_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    mean_itl_ms: list[float] = field(default_factory=list)
    chunk_gap_ms: list[float] = field(default_factory=list)  # only where a tool keeps them
    prompt_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    completed: int = 0
    failed: int = 0

    @property
    def achieved_rps(self) -> float:
        return self.completed / self.window_s if self.window_s > 0 else 0.0


def pct(values: list[float], q: float) -> float:
    """The q-th percentile, NaN when empty."""
    return float(np.percentile(values, q)) if values else float("nan")


def scenario_yaml(api: str, input_tokens: int, output_tokens: int) -> str:
    return f"""schema_version: 1
name: loadgen-accuracy
description: Fixed-size requests for measuring the load generator itself.
bottleneck: the load generator
request: {{api: {api}, ignore_eos: true}}
load: {{concurrency: 1, requests: 1}}
slo: {{error_rate: 1.0}}
workload: {{kind: synthetic, input_tokens: {input_tokens}, output_tokens: {output_tokens}}}
"""


class Ours:
    """deploylab's load generator, through `prepare_run` / `execute`."""

    def __init__(
        self,
        url: str,
        workdir: Path,
        input_tokens: int,
        output_tokens: int,
        api: str = "chat",
        **prepare: Any,
    ) -> None:
        path = workdir / f"scenario-{input_tokens}-{output_tokens}.yaml"
        path.write_text(scenario_yaml(api, input_tokens, output_tokens))
        self.prepared: PreparedRun = prepare_run(load_scenario_file(path), url, **prepare)

    def run(self, load: LoadConfig, label: str) -> Measured:
        return self.measure(execute(self.prepared, load), label)

    @staticmethod
    def measure(results: Results, label: str) -> Measured:
        """The per-request numbers of a run's measured requests."""
        window = results.summary.window_s
        out = Measured("deploylab", label, window[1] - window[0])
        for r in results.requests:
            if not r.in_window:
                continue
            out.lateness_ms.append(r.lateness_ms)
            if not r.ok:
                out.failed += 1
                continue
            out.completed += 1
            assert r.ttft_ms is not None
            out.ttft_ms.append(r.ttft_ms)
            times = r.chunk_times_ms
            if len(times) > 1:
                out.mean_itl_ms.append((times[-1] - times[0]) / (len(times) - 1))
            out.chunk_gap_ms.extend(r.itl_ms)
            out.prompt_tokens.append(r.input_tokens)
            out.output_tokens.append(r.output_tokens)
        return out


class GuideLLM:
    """GuideLLM's `guidellm run` in its own virtualenv, fed a scenario file."""

    def __init__(
        self,
        exe: Path,
        tokenizer_dir: Path,
        workdir: Path,
        workers: int | None,
        model: str = MODEL,
        validate: bool = True,
        request_format: str | None = None,
    ) -> None:
        self.exe, self.tokenizer_dir, self.workdir = exe, tokenizer_dir, workdir
        self.workers, self.model = workers, model
        self.validate = validate  # False: no GET /health first (llama-cpp-python has none)
        self.request_format = request_format  # e.g. "/v1/completions"; None: GuideLLM's own

    def run(
        self,
        url: str,
        profile: dict[str, Any],
        overrides: list[dict[str, Any]],
        input_tokens: int,
        output_tokens: int,
        constraint: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Run one benchmark per override; return GuideLLM's benchmark objects."""
        out = self.workdir / f"guidellm-{time.monotonic_ns()}.json"
        spec = {
            "spec": {
                "backend": {
                    "kind": "openai_http",
                    "target": url,
                    "model": self.model,
                    "validate_backend": self.validate,
                    **({"request_format": self.request_format} if self.request_format else {}),
                },
                "profile": profile,
                "data": [
                    {
                        "kind": "synthetic_text",
                        "prompt_tokens": input_tokens,
                        "output_tokens": output_tokens,
                    }
                ],
                "tokenizer": {"kind": "hf_auto", "model": str(self.tokenizer_dir)},
                "constraints": [constraint],
                "outputs": [{"kind": "json", "path": str(out)}],
            },
            "benchmarks": overrides,
        }
        config = out.with_suffix(".scenario.json")
        config.write_text(json.dumps(spec))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if self.workers is not None:
            env["GUIDELLM__MAX_WORKER_PROCESSES"] = str(self.workers)
        cmd = [str(self.exe), "run", "-c", str(config), "--disable-console-interactive"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.workdir)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"guidellm failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        return list(json.loads(out.read_text())["benchmarks"])

    @staticmethod
    def measured(
        bench: dict[str, Any], label: str, warmup_s: float | None, cooldown_s: float = 0.0
    ) -> Measured:
        """Our per-request numbers from one GuideLLM benchmark's request records (those
        targeted inside the window; every request when warmup_s is None)."""
        start, end = bench["start_time"], bench["end_time"]
        lo, hi = start + (warmup_s or 0.0), end - cooldown_s
        if warmup_s is None:
            lo, hi = -math.inf, math.inf
        out = Measured("guidellm", label, min(hi, end) - max(lo, start))
        groups = bench["requests"]
        for status in ("successful", "errored", "incomplete"):
            for req in groups.get(status) or []:
                t = req["info"]["timings"]
                target = t.get("targeted_start")
                if target is None or not lo <= target <= hi:
                    continue
                begin = t.get("request_start")
                if begin is not None:
                    out.lateness_ms.append((begin - target) * 1e3)
                if status != "successful":
                    out.failed += 1
                    continue
                out.completed += 1
                first, last = t["first_token_iteration"], t["last_token_iteration"]
                out.ttft_ms.append((first - begin) * 1e3)
                n = req["output_metrics"]["text_tokens"] or 0
                out.output_tokens.append(n)
                if n > 1:
                    out.mean_itl_ms.append((last - first) * 1e3 / (n - 1))
                out.prompt_tokens.append(_sim_prompt_tokens(req))
        return out


def _sim_prompt_tokens(req: dict[str, Any]) -> int:
    """The prompt length as the simulator counts it, from the request body GuideLLM sent."""
    try:
        body = json.loads(req["request_args"])["body"]
    except (KeyError, TypeError, ValueError):
        return 0
    if "messages" in body:
        return len(text_pieces(render_chat(body["messages"])))
    prompt = body.get("prompt", "")
    return len(prompt) if isinstance(prompt, list) else len(text_pieces(str(prompt)))


def make_tokenizer_dir() -> Path:
    """GuideLLM needs a Hugging Face tokenizer directory: save the default model's one."""
    from transformers import AutoTokenizer

    from deploylab.catalog import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    folder = Path(tempfile.mkdtemp(prefix="smollm2-tokenizer-"))
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(folder)
    return folder
