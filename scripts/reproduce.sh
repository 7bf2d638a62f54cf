#!/usr/bin/env bash
# One command per dataset: HR and LR classifiers, pretrain, finetune (at the paper's penalty and, in
# some profiles, at lower penalties from the same pretrained policy), two-stream finetune, evaluation
# and figures, each stage loading the previous one's latest checkpoint (ckpt_last.pt).
#
#   scripts/reproduce.sh MODEL [--profile quick|cpu|cpu_full|paper] [--data_dir DIR] [--out DIR] [-- FLAGS]
#
#   quick     (the default) an installation check: 2 epochs a stage on 1,000 training and 500 test images
#             of the CIFAR-10 sample in data/cifar10_sample, a few minutes on a CPU; its numbers mean
#             nothing and its table and figures say so
#   cpu       CIFAR only: a reduced real run, 33 min measured on 2 CPU cores (20,000 training images,
#             the full test split, short schedules, --gpu_data --amp --channels_last on the CPU)
#   cpu_full  CIFAR only: all 50,000 training and 10,000 test images on 2 CPU cores, about 2.5 hours:
#             20-epoch classifiers, 10 pretrain epochs, 15 finetune epochs at penalty -10 and, as a
#             penalty sweep, at -2 and -0.5; 5 two-stream epochs; evaluation in float32
#   paper     the paper's settings (the README's commands): a GPU run; add speed flags after --, e.g.
#             -- --gpu_data --amp --channels_last
#
# --data_dir: the folder holding the dataset (default: data/cifar10_sample for quick, data/ otherwise).
# --out: where the runs go (default: cv/MODEL_PROFILE). Flags after -- go to every training command and
# replace the profile's (e.g. -- --max_epochs 1, or -- --fake_data for a run without data).
# The interpreter is $PYTHON (default: python3), e.g. PYTHON=.venv/bin/python.
# Run again after an interruption: finished stages are skipped, an interrupted one is resumed; a stage
# whose folder holds a run made with other settings (data, subsets, objective...) is refused, never reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage 0
[[ $# -ge 1 && "$1" != -* ]] || usage 2
MODEL=$1; shift
PROFILE=quick; DATA_DIR=""; OUT=""; EXTRA=()
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
  R32_C10|R32_C100) HR_SIZE=32; LR_SIZE=8; CLS_LR=1e-1; PENALTY=-10 ;;
  R50_ImgNet|R34_fMoW) HR_SIZE=224; LR_SIZE=56; CLS_LR=1e-3; PENALTY=-20 ;;
  *) echo "error: unknown MODEL $MODEL; choose R32_C10, R32_C100, R50_ImgNet or R34_fMoW" >&2; exit 2 ;;
esac

# The paper's commands (README, Run), stage by stage. A profile adds flags; a later flag replaces an
# earlier one of the same name (scripts/plan_stage.py), and so do the flags after --.
HR=(--lr "$CLS_LR" --batch_size 128 --img_size "$HR_SIZE" --mode hr)
LRC=(--lr "$CLS_LR" --batch_size 128 --img_size "$LR_SIZE" --mode lr)
PT=(--lr 1e-4 --batch_size 1024 --penalty -0.5)
FT=(--lr 1e-4 --batch_size 128 --penalty "$PENALTY")
FT2=(--lr 1e-4 --batch_size 128 --penalty "$PENALTY")
COMMON=(); SWEEP_PENALTIES=(); TEST=(); EVAL=(); SWEEP=()  # TEST: evaluate.py and visualize.py; EVAL: evaluate.py
case "$PROFILE" in
  quick)
    [[ "$MODEL" == R32_C10 || -n $DATA_DIR ]] || { echo "error: the sample in data/ is CIFAR-10; pass --data_dir for $MODEL" >&2; exit 2; }
    DATA_DIR=${DATA_DIR:-data/cifar10_sample}
    COMMON=(--train_samples 1000 --test_samples 500 --test_interval 1 --max_epochs 2)
    PT+=(--lr 1e-3 --batch_size 256); SWEEP_PENALTIES=(-2)
    TEST=(--test_samples 500); SWEEP=(--thresholds 0.3 0.5 0.7 --budgets 4 8 12) ;;
  cpu)
    [[ "$MODEL" == R32_C* ]] || { echo "error: the cpu profile is defined for CIFAR models" >&2; exit 2; }
    COMMON=(--train_samples 20000 --test_interval 5 --gpu_data --amp --channels_last --device cpu)
    HR+=(--max_epochs 15 --lr_milestones 8 12); LRC+=(--max_epochs 15 --lr_milestones 8 12)
    PT+=(--max_epochs 15 --lr 1e-3 --batch_size 256); FT+=(--max_epochs 6); FT2+=(--max_epochs 4)
    TEST=(--device cpu); EVAL=(--amp)
    SWEEP=(--thresholds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 --budgets 1 2 4 6 8 10 12 14 16) ;;
  cpu_full)
    [[ "$MODEL" == R32_C* ]] || { echo "error: the cpu_full profile is defined for CIFAR models" >&2; exit 2; }
    # Budgets only (README, Results): epochs, the LR steps of the 300-epoch schedule compressed to 20
    # epochs (150/300, 250/300 -> 10, 17), pretrain lr 1e-3 at batch 256 (196 policy steps an epoch
    # instead of 49), tests every epoch in the policy stages for the curves. bf16 in training only.
    COMMON=(--gpu_data --amp --channels_last --device cpu)
    HR+=(--max_epochs 20 --lr_milestones 10 17); LRC+=(--max_epochs 20 --lr_milestones 10 17)
    PT+=(--max_epochs 10 --lr 1e-3 --batch_size 256 --test_interval 1)
    FT+=(--max_epochs 15 --test_interval 1); FT2+=(--max_epochs 5 --test_interval 1)
    SWEEP_PENALTIES=(-2 -0.5)
    TEST=(--device cpu); SWEEP=(--budgets 2 4 6 8 10 12 14) ;;
  paper)
    SWEEP=(--thresholds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 --budgets all) ;;
  *) echo "error: unknown profile $PROFILE; choose quick, cpu, cpu_full or paper" >&2; exit 2 ;;
esac
DATA_DIR=${DATA_DIR:-data/}

mkdir -p "$OUT"
echo "== $MODEL, profile $PROFILE, data $DATA_DIR, outputs in $OUT, $PYTHON"

stage() {  # stage NAME SCRIPT FLAGS...: run, resume or skip one training stage; wall time to OUT/wall_times.tsv
  local name=$1 script=$2; shift 2
  local dir="$OUT/$name" planned flags
  planned=$("$PYTHON" scripts/plan_stage.py "$script" "$dir" -- --model "$MODEL" --data_dir "$DATA_DIR" \
            "${COMMON[@]}" "$@" "${EXTRA[@]}") || exit 2
  mapfile -t flags <<< "$planned"
  local state=${flags[0]}; flags=("${flags[@]:1}")
  if [[ $state == done ]]; then echo "== $name: finished earlier, skipped"; return; fi
  local resume=(); [[ $state == partial ]] && resume=(--resume)
  echo "== $name: $PYTHON $script ${flags[*]}"
  local start=$SECONDS
  "$PYTHON" "$script" --cv_dir "$dir" "${flags[@]}" "${resume[@]}"
  echo "== $name: $((SECONDS - start)) s"
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$OUT/wall_times.tsv"
}

FT_RUNS=(ft)  # finetune run directories: the paper's penalty, then the sweep's
stage hr classifier_training.py "${HR[@]}"
stage lr classifier_training.py "${LRC[@]}"
stage pt pretrain.py "${PT[@]}" --ckpt_hr_cl "$OUT/hr"
stage ft finetune.py "${FT[@]}" --load "$OUT/pt" --ckpt_hr_cl "$OUT/hr"
for penalty in "${SWEEP_PENALTIES[@]}"; do  # same pretrained policy and classifier, another penalty
  FT_RUNS+=("ft_p${penalty#-}")
  stage "ft_p${penalty#-}" finetune.py "${FT[@]}" --load "$OUT/pt" --ckpt_hr_cl "$OUT/hr" --penalty "$penalty"
done
stage ft2 finetune2stream.py "${FT2[@]}" --load "$OUT/ft" --ckpt_lr_cl "$OUT/lr"

# Evaluation: every stage's latest checkpoint; baselines and sweeps on each fine-tuned classifier. The
# test data of training (data folder, subset, fake data) is that of evaluation and figures too.
DATA=(--data_dir "$DATA_DIR" "${TEST[@]}")
for ((i = 0; i < ${#EXTRA[@]}; i++)); do
  case ${EXTRA[i]} in
    --fake_data|--no_download) DATA+=("${EXTRA[i]}") ;;
    --test_samples|--device) DATA+=("${EXTRA[i]}" "${EXTRA[i + 1]}") ;;
  esac
done
mkdir -p "$OUT/eval"
evaluate() {  # evaluate NAME ARGS...: skipped when its JSON exists
  local json="$OUT/eval/$1.json"; shift
  if [[ -f $json ]]; then echo "== evaluate $(basename "$json" .json): done earlier, skipped"; return; fi
  echo "== evaluate $(basename "$json" .json)"
  local start=$SECONDS
  "$PYTHON" evaluate.py "${DATA[@]}" "${EVAL[@]}" --json "$json" --out "$OUT/eval" "$@"
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
  "$PYTHON" visualize.py "${DATA[@]}" --load "$OUT/$name" --png "$png"
done
"$PYTHON" scripts/results_figures.py "$OUT" --profile "$PROFILE"
"$PYTHON" scripts/results_table.py "$OUT" --profile "$PROFILE" | tee "$OUT/results.md"
