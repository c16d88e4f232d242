#!/usr/bin/env bash
# Long-context training on one GPU: RWKV-7 1.5b (configs/rwkv7/1.5b.yaml), DeepSpeed ZeRO-2,
# bf16-mixed, 65536 tokens per optimizer step in every row. Peak memory and tokens/s of ctx 4096
# unsegmented against ctx 16384 and 65536 in 4096-token segments (exact gradient, bptt all),
# each with and without block gradient checkpointing. One process per row; a table at the end.
#   bash scripts/bench_long_context.sh            # all rows, about 10 minutes on an H100
#   ROWS="base4k_ckpt seg64k_ckpt" bash scripts/bench_long_context.sh
# Each row is `skein bench train CONFIG overrides --steps N --warmup K --json F` on the shard
# SHARD (a binidx prefix, vocab <= 65536; default: scripts/bench_shard.py makes one).
set -uo pipefail
cfg=${CFG:-configs/rwkv7/1.5b.yaml}
out=${OUT:-bench-logs/long-context}
steps=${STEPS:-4}
warmup=${WARMUP:-2}
mkdir -p "$out"
unset TORCH_CUDA_ARCH_LIST  # DeepSpeed's op builder cannot parse "9.0a"
export PYTHONUNBUFFERED=1

shard=${SHARD:-$out/shard/bench}
[ -f "$shard.bin" ] || python scripts/bench_shard.py --output "$shard" --tokens 3000000 || exit 1
bench=(python -m skein.train.cli bench train)

common=("data.train=[$shard]" data.tokenizer=null model.vocab_size=65536 trainer.devices=1 trainer.num_nodes=1 trainer.strategy=deepspeed trainer.zero_stage=2
        trainer.precision=bf16-mixed log.wandb=disabled)
declare -A rows=(
    [base4k_ckpt]="ctx_len: 4096, trainer.grad_checkpointing=true"
    [base4k]="ctx_len: 4096, trainer.grad_checkpointing=false"
    [seg16k_ckpt]="ctx_len: 16384, segment_len: 4096, trainer.grad_checkpointing=true"
    [seg64k_ckpt]="ctx_len: 65536, segment_len: 4096, trainer.grad_checkpointing=true"
    [seg64k]="ctx_len: 65536, segment_len: 4096, trainer.grad_checkpointing=false"
)
order=${ROWS:-base4k_ckpt base4k seg16k_ckpt seg64k_ckpt seg64k}

rc=0
for name in $order; do
    spec=${rows[$name]}
    stage=${spec%%, trainer.*}
    ckpt=${spec##*, }
    overrides=("${common[@]}" "$ckpt"
               "stages=[{$stage, micro_bsz: 1, tokens: 1000000000, tokens_per_step: 65536}]")
    echo "== $name: ${overrides[*]}"
    if ! "${bench[@]}" "$cfg" "${overrides[@]}" --steps "$steps" --warmup "$warmup" \
        --json "$out/$name.json" > "$out/$name.log" 2>&1; then
        echo "   failed: see $out/$name.log"
        tail -5 "$out/$name.log"
        rc=1
    fi
done

python - "$out" $order <<'EOF'
import json
import sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
base = {}
print(f"{'row':<12} {'peak GiB':>9} {'tokens/s':>10} {'mem / ctx4096':>14} {'tok/s / ctx4096':>16}")
for name in names:
    f = out / f"{name}.json"
    if not f.exists():
        print(f"{name:<12} {'failed':>9}")
        continue
    r = json.loads(f.read_text())
    ckpt = name.endswith("_ckpt")
    if name.startswith("base4k"):
        base[ckpt] = r
    b = base.get(ckpt)
    mem = f"{r['peak_memory_gb'] / b['peak_memory_gb']:.2f}x" if b and b['peak_memory_gb'] else "-"
    tps = f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}x" if b else "-"
    print(f"{name:<12} {r['peak_memory_gb']:>9.2f} {r['tokens_per_s']:>10,.0f} {mem:>14} {tps:>16}")
EOF
exit $rc
