#!/usr/bin/env bash
# One command per dataset: HR and LR classifiers, pretrain, finetune, two-stream finetune, evaluation
# and figures, each stage loading the previous one's best checkpoint.
#
#   scripts/reproduce.sh MODEL [--profile quick|cpu|paper] [--data_dir DIR] [--out DIR] [-- EXTRA FLAGS]
#
#   quick  a few minutes on a laptop CPU: small subsets, 2 epochs a stage (proves an installation)
#   cpu    CIFAR only: a reduced real run, 33 min measured on 2 CPU cores (20,000 training images, the
#          full test split, short schedules, --gpu_data --amp --channels_last on the CPU)
#   paper  the paper's settings (the README's commands); add speed flags after --, e.g.
#          -- --gpu_data --amp --channels_last
#
# Run again after an interruption: finished stages are skipped, an interrupted one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage 0
[[ $# -ge 1 && "$1" != -* ]] || usage 2
MODEL=$1; shift
PROFILE=quick; DATA_DIR=data/; OUT=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --data_dir) DATA_DIR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown option $1" >&2; usage 2 ;;
  esac
done
OUT=${OUT:-cv/${MODEL}_${PROFILE}}

case "$MODEL" in
  R32_C10|R32_C100) HR=32; LR=8; CLS_LR=1e-1; PENALTY=-10 ;;
  R50_ImgNet|R34_fMoW) HR=224; LR=56; CLS_LR=1e-3; PENALTY=-20 ;;
  *) echo "error: unknown MODEL $MODEL; choose R32_C10, R32_C100, R50_ImgNet or R34_fMoW" >&2; exit 2 ;;
esac

# Per profile: common flags, then per-stage epochs and extras.
case "$PROFILE" in
  quick)
    COMMON=(--train_samples 1000 --test_samples 500 --test_interval 1)
    HR_EP=(--max_epochs 2); LR_EP=(--max_epochs 2); PT_EP=(--max_epochs 2 --lr 1e-3 --batch_size 256)
    FT_EP=(--max_epochs 2); FT2_EP=(--max_epochs 2)
    EVAL=(); SWEEP=(--thresholds 0.3 0.5 0.7 --budgets 4 8 12) ;;
  cpu)
    [[ "$MODEL" == R32_C* ]] || { echo "error: the cpu profile is defined for CIFAR models" >&2; exit 2; }
    COMMON=(--train_samples 20000 --test_interval 5 --gpu_data --amp --channels_last --device cpu)
    HR_EP=(--max_epochs 15 --lr_milestones 8 12); LR_EP=(--max_epochs 15 --lr_milestones 8 12)
    PT_EP=(--max_epochs 15 --lr 1e-3 --batch_size 256)
    FT_EP=(--max_epochs 6); FT2_EP=(--max_epochs 4)
    EVAL=(--amp --device cpu)
    SWEEP=(--thresholds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 --budgets 1 2 4 6 8 10 12 14 16) ;;
  paper)
    COMMON=(); HR_EP=(); LR_EP=(); PT_EP=(); FT_EP=(); FT2_EP=()
    EVAL=(); SWEEP=(--thresholds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 --budgets all) ;;
  *) echo "error: unknown profile $PROFILE; choose quick, cpu or paper" >&2; exit 2 ;;
esac

COMMON=(--model "$MODEL" --data_dir "$DATA_DIR" "${COMMON[@]}" "${EXTRA[@]}")
mkdir -p "$OUT"
echo "== $MODEL, profile $PROFILE, data $DATA_DIR, outputs in $OUT"

stage() {  # stage NAME SCRIPT ARGS...: run, resume or skip one training stage
  local name=$1 script=$2; shift 2
  local dir="$OUT/$name" state
  state=$(python scripts/stage_state.py "$dir" "$MODEL")
  if [[ $state == done ]]; then echo "== $name: finished earlier, skipped"; return; fi
  local resume=(); [[ $state == partial ]] && resume=(--resume)
  echo "== $name: python $script ${*}"
  local start=$SECONDS
  python "$script" --cv_dir "$dir" "$@" "${resume[@]}"
  echo "== $name: $((SECONDS - start)) s"
}

stage hr classifier_training.py "${COMMON[@]}" --lr "$CLS_LR" --batch_size 128 --img_size "$HR" --mode hr "${HR_EP[@]}"
stage lr classifier_training.py "${COMMON[@]}" --lr "$CLS_LR" --batch_size 128 --img_size "$LR" --mode lr "${LR_EP[@]}"
stage pt pretrain.py "${COMMON[@]}" --lr 1e-4 --batch_size 1024 --penalty -0.5 --ckpt_hr_cl "$OUT/hr" "${PT_EP[@]}"
stage ft finetune.py "${COMMON[@]}" --lr 1e-4 --batch_size 128 --load "$OUT/pt" --ckpt_hr_cl "$OUT/hr" --penalty "$PENALTY" "${FT_EP[@]}"
stage ft2 finetune2stream.py "${COMMON[@]}" --lr 1e-4 --batch_size 128 --load "$OUT/ft" --ckpt_lr_cl "$OUT/lr" --penalty "$PENALTY" "${FT2_EP[@]}"

# Evaluation: every stage's best checkpoint; the baselines and sweeps on the finetuned classifier.
EVAL_DATA=(--model "$MODEL" --data_dir "$DATA_DIR" "${EVAL[@]}")
for arg in "${EXTRA[@]}"; do [[ $arg == --fake_data || $arg == --no_download ]] && EVAL_DATA+=("$arg"); done
VIS=()
for arg in "${EXTRA[@]}"; do [[ $arg == --fake_data || $arg == --no_download ]] && VIS+=("$arg"); done
[[ $PROFILE == quick ]] && EVAL_DATA+=(--test_samples 500) && VIS+=(--test_samples 500)
mkdir -p "$OUT/eval"
evaluate() {  # evaluate NAME ARGS...: skipped when its JSON exists
  local json="$OUT/eval/$1.json"; shift
  if [[ -f $json ]]; then echo "== evaluate $(basename "$json" .json): done earlier, skipped"; return; fi
  echo "== evaluate $(basename "$json" .json)"
  python evaluate.py "${EVAL_DATA[@]}" --json "$json" "$@"
}
evaluate hr --load "$OUT/hr"
evaluate lr --load "$OUT/lr"
evaluate pt --load "$OUT/pt"
evaluate ft --load "$OUT/ft" --ckpt_lr_cl "$OUT/lr" --baselines "${SWEEP[@]}" \
  --sweep_csv "$OUT/eval/sweep_ft.csv" --sweep_png "$OUT/eval/sweep_ft.png"
evaluate ft2 --load "$OUT/ft2"
for name in ft ft2; do
  png="$OUT/eval/policy_$name.png"
  if [[ -f $png ]]; then echo "== visualize $name: done earlier, skipped"; continue; fi
  python visualize.py --model "$MODEL" --data_dir "$DATA_DIR" "${VIS[@]}" --load "$OUT/$name" --out "$png"
done
python scripts/results_table.py "$OUT" | tee "$OUT/results.md"
