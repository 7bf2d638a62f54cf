#!/usr/bin/env bash
# One command per dataset: HR and LR classifiers, pretrain, finetune (at the paper's penalty and, in
# some profiles, at lower penalties from the same pretrained policy), two-stream finetune, evaluation
# and figures, each stage loading the previous one's latest checkpoint (ckpt_last.pt).
#
#   scripts/reproduce.sh MODEL [--profile quick|cpu|cpu_full|paper] [--data_dir DIR] [--out DIR] [-- EXTRA FLAGS]
#
#   quick     a few minutes on a laptop CPU: small subsets, 2 epochs a stage (proves an installation)
#   cpu       CIFAR only: a reduced real run, 33 min measured on 2 CPU cores (20,000 training images,
#             the full test split, short schedules, --gpu_data --amp --channels_last on the CPU)
#   cpu_full  CIFAR only: all 50,000 training and 10,000 test images on 2 CPU cores, about 2.5 hours:
#             20-epoch classifiers, 10 pretrain epochs, 15 finetune epochs at penalty -10 and, as a
#             penalty sweep, at -2 and -0.5; 5 two-stream epochs; evaluation in float32
#   paper     the paper's settings (the README's commands); add speed flags after --, e.g.
#             -- --gpu_data --amp --channels_last
#
# The interpreter is $PYTHON (default: python3), e.g. PYTHON=.venv/bin/python.
# Run again after an interruption: finished stages are skipped, an interrupted one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

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
"$PYTHON" -c "import torch" 2>/dev/null || {
  echo "error: $PYTHON cannot import torch; set PYTHON to the interpreter of your environment" >&2; exit 2; }

case "$MODEL" in
  R32_C10|R32_C100) HR=32; LR=8; CLS_LR=1e-1; PENALTY=-10 ;;
  R50_ImgNet|R34_fMoW) HR=224; LR=56; CLS_LR=1e-3; PENALTY=-20 ;;
  *) echo "error: unknown MODEL $MODEL; choose R32_C10, R32_C100, R50_ImgNet or R34_fMoW" >&2; exit 2 ;;
esac

# Per profile: common flags, per-stage epochs and extras, the penalties of the finetune sweep (besides
# the paper's), and the evaluation's flags and sweeps.
SWEEP_PENALTIES=()
case "$PROFILE" in
  quick)
    COMMON=(--train_samples 1000 --test_samples 500 --test_interval 1)
    HR_EP=(--max_epochs 2); LR_EP=(--max_epochs 2); PT_EP=(--max_epochs 2 --lr 1e-3 --batch_size 256)
    FT_EP=(--max_epochs 2); FT2_EP=(--max_epochs 2); SWEEP_PENALTIES=(-2)
    EVAL=(); SWEEP=(--thresholds 0.3 0.5 0.7 --budgets 4 8 12) ;;
  cpu)
    [[ "$MODEL" == R32_C* ]] || { echo "error: the cpu profile is defined for CIFAR models" >&2; exit 2; }
    COMMON=(--train_samples 20000 --test_interval 5 --gpu_data --amp --channels_last --device cpu)
    HR_EP=(--max_epochs 15 --lr_milestones 8 12); LR_EP=(--max_epochs 15 --lr_milestones 8 12)
    PT_EP=(--max_epochs 15 --lr 1e-3 --batch_size 256)
    FT_EP=(--max_epochs 6); FT2_EP=(--max_epochs 4)
    EVAL=(--amp --device cpu)
    SWEEP=(--thresholds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 --budgets 1 2 4 6 8 10 12 14 16) ;;
  cpu_full)
    [[ "$MODEL" == R32_C* ]] || { echo "error: the cpu_full profile is defined for CIFAR models" >&2; exit 2; }
    # Budgets only (README, Results): epochs, the LR steps of the 300-epoch schedule compressed to 20
    # epochs (150/300, 250/300 -> 10, 17), pretrain lr 1e-3 at batch 256 (196 policy steps an epoch
    # instead of 49), tests every epoch in the policy stages for the curves. bf16 in training only.
    COMMON=(--gpu_data --amp --channels_last --device cpu)
    HR_EP=(--max_epochs 20 --lr_milestones 10 17); LR_EP=(--max_epochs 20 --lr_milestones 10 17)
    PT_EP=(--max_epochs 10 --lr 1e-3 --batch_size 256 --test_interval 1)
    FT_EP=(--max_epochs 15 --test_interval 1); FT2_EP=(--max_epochs 5 --test_interval 1)
    SWEEP_PENALTIES=(-2 -0.5)
    EVAL=(--device cpu); SWEEP=(--budgets 2 4 6 8 10 12 14) ;;
  paper)
    COMMON=(); HR_EP=(); LR_EP=(); PT_EP=(); FT_EP=(); FT2_EP=()
    EVAL=(); SWEEP=(--thresholds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 --budgets all) ;;
  *) echo "error: unknown profile $PROFILE; choose quick, cpu, cpu_full or paper" >&2; exit 2 ;;
esac

COMMON=(--model "$MODEL" --data_dir "$DATA_DIR" "${COMMON[@]}" "${EXTRA[@]}")
mkdir -p "$OUT"
echo "== $MODEL, profile $PROFILE, data $DATA_DIR, outputs in $OUT, $PYTHON"

stage() {  # stage NAME SCRIPT ARGS...: run, resume or skip one training stage; wall time to OUT/wall_times.tsv
  local name=$1 script=$2; shift 2
  local dir="$OUT/$name" state
  state=$("$PYTHON" scripts/stage_state.py "$dir" "$MODEL")
  if [[ $state == done ]]; then echo "== $name: finished earlier, skipped"; return; fi
  local resume=(); [[ $state == partial ]] && resume=(--resume)
  echo "== $name: $PYTHON $script ${*}"
  local start=$SECONDS
  "$PYTHON" "$script" --cv_dir "$dir" "$@" "${resume[@]}"
  echo "== $name: $((SECONDS - start)) s"
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$OUT/wall_times.tsv"
}

FT_RUNS=(ft)  # finetune run directories: the paper's penalty, then the sweep's
stage hr classifier_training.py "${COMMON[@]}" --lr "$CLS_LR" --batch_size 128 --img_size "$HR" --mode hr "${HR_EP[@]}"
stage lr classifier_training.py "${COMMON[@]}" --lr "$CLS_LR" --batch_size 128 --img_size "$LR" --mode lr "${LR_EP[@]}"
stage pt pretrain.py "${COMMON[@]}" --lr 1e-4 --batch_size 1024 --penalty -0.5 --ckpt_hr_cl "$OUT/hr" "${PT_EP[@]}"
stage ft finetune.py "${COMMON[@]}" --lr 1e-4 --batch_size 128 --load "$OUT/pt" --ckpt_hr_cl "$OUT/hr" --penalty "$PENALTY" "${FT_EP[@]}"
for penalty in "${SWEEP_PENALTIES[@]}"; do  # same pretrained policy and classifier, another penalty
  FT_RUNS+=("ft_p${penalty#-}")
  stage "ft_p${penalty#-}" finetune.py "${COMMON[@]}" --lr 1e-4 --batch_size 128 --load "$OUT/pt" --ckpt_hr_cl "$OUT/hr" --penalty "$penalty" "${FT_EP[@]}"
done
stage ft2 finetune2stream.py "${COMMON[@]}" --lr 1e-4 --batch_size 128 --load "$OUT/ft" --ckpt_lr_cl "$OUT/lr" --penalty "$PENALTY" "${FT2_EP[@]}"

# Evaluation: every stage's latest checkpoint; baselines and sweeps on each fine-tuned classifier.
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
  local start=$SECONDS
  "$PYTHON" evaluate.py "${EVAL_DATA[@]}" --json "$json" "$@"
  printf '%s\t%s\n' "eval_$(basename "$json" .json)" "$((SECONDS - start))" >> "$OUT/wall_times.tsv"
}
evaluate hr --load "$OUT/hr"
evaluate lr --load "$OUT/lr"
evaluate pt --load "$OUT/pt"
for name in "${FT_RUNS[@]}"; do
  evaluate "$name" --load "$OUT/$name" --ckpt_lr_cl "$OUT/lr" --baselines "${SWEEP[@]}" \
    --sweep_csv "$OUT/eval/sweep_$name.csv" --sweep_png "$OUT/eval/sweep_$name.png"
done
evaluate ft2 --load "$OUT/ft2"
for name in "${FT_RUNS[@]}" ft2; do
  png="$OUT/eval/policy_$name.png"
  if [[ -f $png ]]; then echo "== visualize $name: done earlier, skipped"; continue; fi
  "$PYTHON" visualize.py --model "$MODEL" --data_dir "$DATA_DIR" "${VIS[@]}" --load "$OUT/$name" --out "$png"
done
"$PYTHON" scripts/results_figures.py "$OUT"
"$PYTHON" scripts/results_table.py "$OUT" | tee "$OUT/results.md"
