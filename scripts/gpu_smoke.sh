#!/usr/bin/env bash
# Every GPU path once, on one GPU and generated data, in about 10 minutes (docs/scaling.md, "GPU smoke test"):
# MAE pretraining (bf16), classification fine-tune and linear probe, segmentation and detection on both
# engines (mixed precision), a 2-process torchrun on the one GPU, and `bench perf pretrain`.
# Prints one PASS/FAIL line per step with its img/s; exits 1 if any step failed.
#   bash scripts/gpu_smoke.sh [--cpu] [--dry-run] [--only STEP,STEP] [--out DIR]
# --cpu: tiny sizes on the CPU (checks the plumbing in about a minute per step); --dry-run: list the
# commands only; --only: a subset of: data pretrain finetune linear seg det-mmdet det-detectron2 torchrun perf.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=work_dirs/gpu_smoke
CPU=0
DRY=0
ONLY=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --cpu) CPU=1 ;;
        --dry-run) DRY=1 ;;
        --only) ONLY=${2:?--only needs a list}; shift ;;
        --out) OUT=${2:?--out needs a folder}; shift ;;
        *) echo "error: unknown option $1 (--cpu, --dry-run, --only STEP,STEP, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done

if [[ $CPU == 1 ]]; then
    # tiny: a 32 px ViT of width 32 on 1 thread; the same commands as on the GPU
    export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
    BIG=vit_test_patch8 SMALL=vit_test_patch8 PRE_BATCH=4 PRE_STEPS=2 CLS_EPOCHS=1 DENSE_ITERS=2
    COCO="n_train=4, n_val=2, image_size=(64, 64)" ADE="n_train=4, n_val=2, image_size=(64, 64)"
    PERF="--arch vit_test_patch8 --img-size 32 --batch-size 2 --iters 1 --decoder-depths 1"
else
    # MAE ViT-B/16 at 224 for a real pretraining rate; the dense and DDP steps on the demo's small ViT
    BIG=vit_base_patch16 SMALL=vit_demo_patch8 PRE_BATCH=64 PRE_STEPS=50 CLS_EPOCHS=2 DENSE_ITERS=40
    COCO="n_train=16, n_val=8, image_size=(256, 256)" ADE="n_train=16, n_val=8, image_size=(128, 128)"
    PERF="--arch vit_base_patch16 --batch-size 64 --iters 10 --baseline"
fi
D=$OUT/data
bench=("$PY" -m bench.cli)
declare -a STEPS=() COMMANDS=() IMAGES=()
step() {  # step NAME IMAGES COMMAND...: IMAGES processed by the command (0: not a training step)
    STEPS+=("$1")
    IMAGES+=("$2")
    COMMANDS+=("$(printf '%q ' "${@:3}")")
}

step data 0 "$PY" -c "from tasks.registry import get_task as t
t('digits').generate('$D/digits')
t('coco').generate('$D/coco', $COCO)
t('ade20k').generate('$D/ade', $ADE)"
step pretrain $((PRE_BATCH * PRE_STEPS)) "${bench[@]}" pretrain --method mae --arch $BIG --data embedded \
    --steps $PRE_STEPS --batch-size $PRE_BATCH --amp --no-progress --out "$OUT/pretrain"
for protocol in finetune linear; do
    step $protocol 0 "${bench[@]}" cls --protocol $protocol --dataset digits --data-root "$D/digits" \
        --backbone mae_$BIG --checkpoint "$OUT/pretrain/pretrain.pth" --config smoke --epochs $CLS_EPOCHS \
        --out "$OUT/cls-$protocol" --results "$OUT/results"
done
step seg 0 "${bench[@]}" seg --backbone random_$SMALL --data-root "$D/ade/ADEChallengeData2016" --config smoke \
    --iters $DENSE_ITERS --amp --out "$OUT/seg" --results "$OUT/results"
for engine in mmdet detectron2; do
    step det-$engine 0 "${bench[@]}" det --engine $engine --backbone random_$SMALL --data-root "$D/coco" \
        --config smoke --iters $DENSE_ITERS --amp --out "$OUT/det-$engine" --results "$OUT/results"
done
# two processes share the one GPU: NCCL refuses two ranks on one device, so this run asks for gloo
step torchrun 0 env BENCH_DIST_BACKEND=gloo "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node 2 -m bench.cli pretrain --launcher pytorch --method mae --arch $SMALL --data embedded \
    --steps 10 --batch-size 8 --amp --no-progress --out "$OUT/torchrun"
step perf 0 "${bench[@]}" perf pretrain $PERF

for name in ${ONLY//,/ }; do
    if [[ " ${STEPS[*]} " != *" $name "* ]]; then
        echo "error: --only $name: not a step (${STEPS[*]})" >&2
        exit 2
    fi
done
mkdir -p "$OUT/logs"
failed=0
for i in "${!STEPS[@]}"; do
    name=${STEPS[$i]}
    if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then
        continue
    fi
    if [[ $DRY == 1 ]]; then
        echo "$name: ${COMMANDS[$i]}"
        continue
    fi
    log=$OUT/logs/$name.log
    start=$(date +%s.%N)
    eval "${COMMANDS[$i]}" > "$log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    rate=""
    if [[ ${IMAGES[$i]} != 0 ]]; then
        rate=$(awk -v n="${IMAGES[$i]}" -v s="$secs" 'BEGIN { printf ", %.1f img/s (wall, with start-up)", n / s }')
    elif [[ $name == perf ]]; then
        # the MAE row of each precision: decoder, prec, MAE img/s, mask-token img/s
        rate=$(awk '$2 == "bf16" || $2 == "fp32" { printf ", decoder %s %s: MAE %s img/s, mask-token %s img/s", $1, $2, $3, $4 }' "$log")
    fi
    if [[ $rc == 0 ]]; then
        echo "PASS $name (${secs} s$rate)"
    else
        echo "FAIL $name (exit $rc, ${secs} s): $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200) [log: $log]"
        failed=1
    fi
done
exit $failed
