"""Our server beside a server we did not write, at matched settings: `deploylab serve` and the
llama.cpp server (llama-cpp-python's `python -m llama_cpp.server`) on the default model's GGUF.

For each server it runs `deploylab loadtest` with `chat-short`, `rag` (a copy whose corpus fits
the model's 8k context) and `interactive-long` at the same concurrency, duration, seed and
tokenizer, then writes one comparison report per scenario with `deploylab report compare` (the
first run, ours, is the baseline). With `--guidellm PATH` it also drives GuideLLM and
`deploylab loadtest` against the llama.cpp server at the same fixed load, one after the other,
and prints TTFT, ITL and throughput side by side (docs/benchmarks.md, "Peer servers").

    python benchmarks/peer_servers.py --duration 60 --concurrency 1 --out out/peers \
        --guidellm /tmp/gllm/bin/guidellm

Needs `pip install "llama-cpp-python[server]"` (not a deploylab dependency) and, for the
GuideLLM part, GuideLLM in its own virtualenv. The flags that make the test fair are in
docs/loadtest.md, "Testing servers we did not write".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from deploylab.catalog import DEFAULT_MODEL, resolve_model  # noqa: E402
from deploylab.loadtest.config import LoadConfig  # noqa: E402
from deploylab.loadtest.local_server import LocalServer, free_port  # noqa: E402
from deploylab.loadtest.runner import execute  # noqa: E402
from loadgen_harness import GuideLLM, Measured, Ours, make_tokenizer_dir, pct  # noqa: E402

EXE = str(Path(sys.executable).with_name("deploylab"))
SCENARIOS = ("chat-short", "rag", "interactive-long")
# rag's corpus goes to 16k-token documents; SmolLM2-135M has an 8k context, so the copy run
# here keeps the same shape with documents of 256-1,536 tokens (3 per request: at most ~5k)
RAG_8K = """\
schema_version: 1
name: rag
description: rag with a corpus that fits an 8k context (benchmarks/peer_servers.py)
bottleneck: prefill cost, prefix-cache effectiveness
request: {api: chat, ignore_eos: true}
load: {rate: 1, duration_s: 120, warmup_s: 5, cooldown_s: 5}
slo_profiles:
  cpu: {ttft_ms: {p90: 20000}, e2e_ms: {p99: 60000}, error_rate: 0.01}
workload:
  kind: rag
  system_prompt_tokens: 512
  documents_per_request: 3
  corpus:
    documents: 200
    sizes: [{tokens: 256, weight: 0.4}, {tokens: 512, weight: 0.3},
            {tokens: 1024, weight: 0.2}, {tokens: 1536, weight: 0.1}]
  question_tokens: {dist: uniform, min: 16, max: 64}
  output_tokens: {dist: uniform, min: 32, max: 128}
"""


class LlamaCppServer:
    """llama-cpp-python's OpenAI server on the GGUF, with the flags a fair test needs."""

    def __init__(self, gguf: Path, threads: int, log: Path, n_ctx: int = 8192) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--model_alias", DEFAULT_MODEL, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(n_ctx), "--n_threads", str(threads),
            "--n_threads_batch", str(threads),
            # by default a waiting request cuts the running stream short (a [DONE] with no
            # finish_reason): the load test would measure truncated answers
            "--interrupt_requests", "False",
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaCppServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("wb")
        # OpenMP threads that spin at barriers starve on a shared, oversubscribed machine
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        self._proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited; see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"llama.cpp server not ready in 300 s; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)


def loadtest(url: str, scenario: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`deploylab loadtest` at the matched settings; returns the summary."""
    cmd = [
        EXE, "loadtest", "-s", scenario, "--url", url, "--tokenizer", DEFAULT_MODEL,
        "--model", DEFAULT_MODEL, "--concurrency", str(args.concurrency),
        "--duration", str(args.duration), "--warmup", str(args.warmup), "--cooldown", "0",
        "--ramp-up", "0",
        "--seed", "0", "--check-timeout", "120", "--timeout", str(args.timeout),
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    if not scenario.startswith("interactive"):  # chat-short and the rag copy have CPU SLOs
        cmd += ["--slo-profile", "cpu"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False, timeout=args.duration * 20 + 300)
    data = json.loads((out / "results.json").read_text())
    return dict(data["summary"])


def run_peer(name: str, url: str, args: argparse.Namespace, rag: Path) -> dict[str, Any]:
    rows = {}
    for scenario in SCENARIOS:
        path = str(rag) if scenario == "rag" else scenario
        rows[scenario] = loadtest(url, path, args.out / name / scenario, args)
    return rows


def compare(args: argparse.Namespace, peers: list[str]) -> None:
    for scenario in SCENARIOS:
        runs = [str(args.out / p / scenario) for p in peers]
        labels = [x for p in peers for x in ("--label", p)]
        html = args.out / f"compare-{scenario}.html"
        cmd = [EXE, "report", "compare", *runs, *labels, "--out", str(html)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False, timeout=300)


def row(tool: str, m: Measured, own: dict[str, float]) -> dict[str, Any]:
    """Each tool's own summary figures, then the same per-request definitions for both
    (TTFT from the actual send, mean inter-token gap per request; benchmarks/loadgen_harness)."""
    return {
        "tool": tool,
        "completed": m.completed,
        "failed": m.failed,
        "own_ttft_p50_ms": own["ttft"],
        "own_itl_p50_ms": own["itl"],
        "own_output_tok_s": own["tok_s"],
        "ttft_p50_ms": pct(m.ttft_ms, 50),
        "mean_itl_p50_ms": pct(m.mean_itl_ms, 50),
        "output_tokens_mean": sum(m.output_tokens) / m.completed if m.completed else 0.0,
    }


def guidellm_side_by_side(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """GuideLLM, then deploylab, against the same target at the same load: concurrency
    `args.concurrency`, 128 tokens in, 64 out (ignore_eos asked), `args.duration` seconds
    each, every request counted (no warm-up for either). Both on /v1/completions: GuideLLM's
    chat messages carry content as a list of parts, which SmolLM2's chat template in
    llama-cpp-python cannot render (HTTP 500 on every request)."""
    work = Path(tempfile.mkdtemp(prefix="peer-guidellm-"))
    glm = GuideLLM(
        args.guidellm, make_tokenizer_dir(), work, None, model=DEFAULT_MODEL, validate=False,
        request_format="/v1/completions",
    )  # fmt: skip
    bench = glm.run(
        url, {"kind": "concurrent", "streams": [args.concurrency]},
        [{"profile.streams": args.concurrency}], 128, 64,
        {"kind": "max_duration", "seconds": args.duration},
    )[0]  # fmt: skip
    metric = bench["metrics"]
    own = {
        "ttft": metric["time_to_first_token_ms"]["successful"]["median"],
        "itl": metric["inter_token_latency_ms"]["successful"]["median"],
        "tok_s": metric["output_tokens_per_second"]["successful"]["mean"],
    }
    rows = [row("GuideLLM 0.8.1", GuideLLM.measured(bench, "c", None), own)]
    ours = Ours(url, work, 128, 64, api="completions", tokenizer=DEFAULT_MODEL, model=DEFAULT_MODEL)
    load = LoadConfig(
        concurrency=args.concurrency, duration_s=args.duration, warmup_s=0.0, cooldown_s=0.0
    )
    results = execute(ours.prepared, load)
    s = results.summary
    own = {"ttft": s.ttft_ms.p50, "itl": s.itl_ms.p50, "tok_s": s.output_tokens_per_s}
    rows.append(row("deploylab", ours.measure(results, "c"), own))
    return rows


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()))


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for peer, by_scenario in results.items():
        for scenario, s in by_scenario.items():
            rows.append(
                {
                    "server": peer,
                    "scenario": scenario,
                    "done": s["requests_completed"],
                    "failed": s["requests_failed"],
                    "short": s.get("requests_short", 0),
                    "ttft_p50_ms": s["ttft_ms"]["p50"] or float("nan"),
                    "ttft_p90_ms": s["ttft_ms"]["p90"] or float("nan"),
                    "itl_p50_ms": s["itl_ms"]["p50"] or float("nan"),
                    "e2e_p50_ms": s["e2e_ms"]["p50"] or float("nan"),
                    "tok_s_window": s["output_tokens_per_s"] or 0.0,
                    "tok_s_run": s.get("output_tokens_per_s_run") or 0.0,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/peers"))
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--guidellm", type=Path, default=None, help="guidellm executable")
    parser.add_argument(
        "--skip-scenarios", action="store_true", help="only GuideLLM beside deploylab"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="per-request timeout, s")
    parser.add_argument(
        "--skip-ours", action="store_true", help="reuse OUT/deploylab from an earlier run"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rag = args.out / "rag-8k.yaml"
    rag.write_text(RAG_8K)
    gguf = resolve_model(DEFAULT_MODEL)
    results: dict[str, dict[str, Any]] = {}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"started {started}, load average {os.getloadavg()}", flush=True)
    if not args.skip_ours:
        with LocalServer(args.out / "deploylab-serve.log") as server:
            results["deploylab"] = run_peer("deploylab", server.base_url, args, rag)
    side: list[dict[str, Any]] = []
    with LlamaCppServer(gguf, args.threads, args.out / "llama-cpp.log") as llama:
        if not args.skip_scenarios:
            results["llama-cpp"] = run_peer("llama-cpp", llama.url, args, rag)
        if args.guidellm is not None:
            side = guidellm_side_by_side(llama.url, args)
    if not args.skip_scenarios:
        compare(args, ["deploylab", *results] if args.skip_ours else list(results))
        print_table("deploylab loadtest, per server and scenario", summary_rows(results))
    if side:
        print_table("GuideLLM and deploylab on the llama.cpp server, same load", side)
    print(f"load average after {os.getloadavg()}", flush=True)
    record = {"started": started, "args": vars(args), "runs": results, "side_by_side": side}
    (args.out / "peer_servers.json").write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
