#!/usr/bin/env bash
# interactive-long (CPU scale) against two `deploylab serve` at once, same small device cache:
# KV tiers off vs a host tier. Both load tests run at the same time, so both see the same
# machine. Usage: benchmarks/kv_tiers_scenario.sh OUTDIR [SCENARIO] [DEVICE_CACHE_GIB]
set -euo pipefail
out=${1:-out/kv-tiers-scenario}
scenario=${2:-benchmarks/scenarios/interactive-long-cpu.yaml}
cache=${3:-0.09}  # about 2,000 tokens of SmolLM2-135M: two or three of the six sessions
mkdir -p "$out"
export OMP_NUM_THREADS=1
deploylab serve --port 8431 --kv-cache-gib "$cache" --max-num-seqs 8 > "$out/serve-off.log" 2>&1 &
off=$!
deploylab serve --port 8432 --kv-cache-gib "$cache" --max-num-seqs 8 --kv-offload-gib 1 \
  > "$out/serve-host.log" 2>&1 &
host=$!
trap 'kill $off $host 2>/dev/null || true' EXIT
for port in 8431 8432; do
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 2; done
done
deploylab loadtest --scenario "$scenario" --url http://127.0.0.1:8431 --out "$out/off" \
  --tokenizer smollm2-135m-instruct --no-progress > "$out/loadtest-off.log" 2>&1 &
a=$!
deploylab loadtest --scenario "$scenario" --url http://127.0.0.1:8432 --out "$out/host" \
  --tokenizer smollm2-135m-instruct --no-progress > "$out/loadtest-host.log" 2>&1 &
b=$!
wait $a $b
curl -s http://127.0.0.1:8432/metrics | grep -E "^(vllm:external|deploylab:kv_offload_host)" \
  > "$out/host-metrics.txt" || true
