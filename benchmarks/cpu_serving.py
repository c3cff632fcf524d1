"""CPU serving: `deploylab serve` against the llama.cpp server on the same GGUF (issue 24).

Starts every side at once, then drives each with `deploylab loadtest --url` on the same
scenario and seed (same prompts), concurrency by concurrency, the sides interleaved:

- `deploylab-Q`: this source tree's server with `--quantization Q` (default: int4 and none);
- `deploylab-main`: the same command on another source tree (`--main-src`, e.g. main's
  code, for "today's" figures in the same run);
- `llama.cpp-tN`: llama-cpp-python's server (`python -m llama_cpp.server`) with N threads,
  `OMP_WAIT_POLICY=PASSIVE`; on a CPU that advertises AMX its extra (repacking) buffer types
  are turned off, since an AMX that the kernel or hypervisor does not enable fails there.

    flock /work/wt/bench.lock python benchmarks/cpu_serving.py --out out/cpu-serving \
        --main-src /work/main/src --concurrency 1 2 8 --duration 40

Prints one row per side and concurrency and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from deploylab.catalog import DEFAULT_MODEL, resolve_model
from deploylab.loadtest.local_server import free_port

EXE = str(Path(sys.executable).with_name("deploylab"))
# llama-cpp-python's server with `use_extra_bufts` off: its CLI has no flag for it
NO_EXTRA_BUFTS = """
import sys, llama_cpp.llama_cpp as c, llama_cpp.llama as l
_default = c.llama_model_default_params
def _params():
    p = _default(); p.use_extra_bufts = False; return p
c.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"; main()
"""


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True when /proc/cpuinfo's flags name an AMX unit."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(f.startswith("amx") for f in line.split(":", 1)[1].split())
    return False


class Server:
    """A server subprocess on a loopback port, ready when `ready_path` answers 200."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, ready: str):
        self.name, self.cmd, self.env, self.log, self.ready = name, cmd, env, log, ready
        self.port = int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("wb")
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited before it was ready; see {self.log}")
            try:
                with urllib.request.urlopen(self.url + self.ready, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"{self.name} not ready in {timeout:g} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def build_servers(args: argparse.Namespace, gguf: Path) -> list[Server]:
    """The sides of the comparison, not started."""
    # ours as users start it (this tree's `serve` picks its own OpenMP policy; main's did not)
    plain = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    base = dict(plain, OMP_WAIT_POLICY="PASSIVE")
    servers = []

    def ours(name: str, src: str, quant: str | None = None, *extra: str) -> Server:
        env = dict(plain, PYTHONPATH=src)
        cmd = [sys.executable, "-m", "deploylab", "serve", "--port", str(free_port())]
        if quant:
            cmd += ["--quantization", quant]
        return Server(name, [*cmd, *extra], env, args.out / f"{name}.log", "/health")

    src = str(Path(__file__).resolve().parents[1] / "src")
    servers += [ours(f"deploylab-{q}", src, q) for q in args.quantization]
    if args.cpu_compile:
        servers.append(ours("deploylab-int4-compiled", src, "int4", "--cpu-compile"))
    if args.head4:
        head4 = ("--cpu-compile", "--lm-head-quantization", "int4")
        servers.append(ours("deploylab-int4-compiled-head4", src, "int4", *head4))
    if args.main_src:
        servers.append(ours("deploylab-main", str(args.main_src)))
    amx = cpu_has_amx()
    for threads in args.llama_threads:
        port = str(free_port())
        head = ["-c", NO_EXTRA_BUFTS] if amx else ["-m", "llama_cpp.server"]
        cmd = [
            sys.executable, *head, "--model", str(gguf), "--model_alias", DEFAULT_MODEL,
            "--host", "127.0.0.1", "--port", port, "--n_ctx", "8192",
            "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--interrupt_requests", "False",
        ]  # fmt: skip
        name = f"llama.cpp-t{threads}"
        env = dict(base, PYTHONPATH=args.llama_pythonpath) if args.llama_pythonpath else base
        servers.append(Server(name, cmd, env, args.out / f"{name}.log", "/v1/models"))
    return servers


def loadtest_cmd(url: str, out: Path, concurrency: int, args: argparse.Namespace) -> list[str]:
    """`deploylab loadtest` against one server at one concurrency."""
    return [
        EXE, "loadtest", "-s", args.scenario, "--url", url, "--tokenizer", DEFAULT_MODEL,
        "--model", DEFAULT_MODEL, "--concurrency", str(concurrency),
        "--duration", str(args.duration), "--warmup", str(args.warmup), "--cooldown", "0",
        "--ramp-up", "0", "--seed", "0", "--timeout", "300", "--out", str(out), "--no-progress",
        "--slo-profile", "cpu",
    ]  # fmt: skip


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The figures this benchmark reports, from a loadtest results.json."""
    s = results["summary"]
    return {
        "completed": s["requests_completed"],
        "failed": s["requests_failed"],
        "output_tok_s": s.get("output_tokens_per_s") or 0.0,
        "ttft_p50_ms": s["ttft_ms"]["p50"],
        "itl_p50_ms": s["itl_ms"]["p50"],
        "itl_p90_ms": s["itl_ms"]["p90"],
        "e2e_p50_ms": s["e2e_ms"]["p50"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/cpu-serving"))
    parser.add_argument("--scenario", default="chat-short")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--quantization", nargs="+", default=["int4", "none"])
    parser.add_argument("--main-src", type=Path, default=None, help="a second source tree")
    parser.add_argument("--llama-threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument(
        "--llama-pythonpath", help="where llama-cpp-python is installed, if not in this venv"
    )
    parser.add_argument(
        "--cpu-compile", action="store_true", help="also serve int4 with --cpu-compile"
    )
    parser.add_argument(
        "--head4", action="store_true",
        help="also serve int4 with --cpu-compile and --lm-head-quantization int4",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    servers = build_servers(args, resolve_model(DEFAULT_MODEL))
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait()
        for c in args.concurrency:
            for s in servers:
                out = args.out / s.name / f"c{c}"
                cmd = loadtest_cmd(s.url, out, c, args)
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, timeout=3600)
                row = {"server": s.name, "concurrency": c}
                row.update(summarize(json.loads((out / "results.json").read_text())))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for s in servers:
            s.stop()
    meta = {"started": started, "argv": sys.argv, "amx": cpu_has_amx()}
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
