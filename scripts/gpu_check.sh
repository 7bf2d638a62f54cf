#!/usr/bin/env bash
# The GPU check: one unattended run that finds, in one go, what only a GPU shows, within 8 minutes on
# one H100. Each step runs under its own timeout, so one failure cannot eat the budget; raw outputs go
# to OUT_DIR, and one summary table is printed at the end (and written to OUT_DIR/summary.md).
#
#   scripts/gpu_check.sh OUT_DIR [--data_dir DIR] [--cpu-smoke]
#
#   --data_dir DIR  a folder holding CIFAR10/ (for the throughput with the real images; without it,
#                   generated images of the same size are used: the speed is the same)
#   --cpu-smoke     every step on the CPU at tiny sizes, in about two minutes: keeps this script from
#                   rotting (tests/test_gpu_check.py runs it); its numbers mean nothing
#
# Steps: versions (GPU, driver, torch, CUDA); pytest -m gpu; bench/step_speed.py (default and --amp
# --channels_last, against the authors' step); CIFAR-10 classifier throughput with --gpu_data --amp
# --channels_last; every CIFAR-10 stage at the paper's batch sizes for a fixed number of steps, with the
# wall time it projects for the paper profile (plain float32, and with the speed options); peak memory
# of R50_ImgNet pretrain at batch 1024 and finetune at batch 128 in float32 and bf16; one --compile run
# with its compilation time; a two-process torchrun epoch over NCCL when two GPUs are visible. The
# interpreter is $PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage 0
[[ $# -ge 1 && "$1" != -* ]] || usage 2
OUT=$1; shift
SMOKE=0; DATA_DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu-smoke) SMOKE=1; shift ;;
    --data_dir) DATA_DIR=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; usage 2 ;;
  esac
done
mkdir -p "$OUT"
: > "$OUT/steps.tsv"

if [[ $SMOKE == 1 ]]; then
  DEV=(--device cpu); STEPS=2; SHORT=(--batch_size 8); TIME=240
  DATA=(--fake_data --train_samples 64 --num_workers 0)
  BENCH=(--device cpu --batch_size 8 --reps 1 --steps 1 --stages classifier_lr pretrain)
  R50=(--device cpu --synthetic --batch_size 1 --steps 1)
  COMPILE=(--device cpu --fake_data --train_samples 32 --num_workers 0 --batch_size 16 --steps 1)
else
  DEV=(--device cuda); STEPS=40; SHORT=(); TIME=90
  if [[ -n $DATA_DIR ]]; then DATA=(--data_dir "$DATA_DIR" --train_samples 20000 --num_workers 8)
  else DATA=(--fake_data --train_samples 20000 --num_workers 8); fi
  BENCH=(--device cuda --batch_size 256)
  R50=(--device cuda --synthetic --steps 3)
  COMPILE=(--device cuda "${DATA[@]}" --gpu_data --amp --channels_last --steps 20)
fi

BUDGET=470  # seconds for all steps: 8 minutes with room for the summary
step() {  # step NAME SECONDS COMMAND...: run under a timeout (its own, cut to what is left of BUDGET),
  local name=$1 limit=$2; shift 2  # log to OUT/NAME.log, record the status in OUT/steps.tsv
  local start=$SECONDS status
  (( limit > BUDGET - SECONDS )) && limit=$((BUDGET - SECONDS))
  if (( limit < 10 )); then
    printf '%s\t%s\t0\n' "$name" "skipped: the 8-minute budget is spent" >> "$OUT/steps.tsv"
    echo "== $name: skipped, the budget is spent"; return
  fi
  echo "== $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  status=$?
  case $status in 0) status=ok ;; 124|137) status="timed out after ${limit} s" ;; *) status="failed ($status)" ;; esac
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$OUT/steps.tsv"
  echo "   $status, $((SECONDS - start)) s"
}

step versions 60 "$PYTHON" -c "
import platform, shutil, subprocess, torch
print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| Python', platform.python_version())
if torch.cuda.is_available():
    print('GPU', torch.cuda.get_device_name(0), '| capability', torch.cuda.get_device_capability(0))
    print('GPUs visible', torch.cuda.device_count())
    if shutil.which('nvidia-smi'):  # the driver's tool; not on every machine with a GPU
        print(subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
                             capture_output=True, text=True).stdout.strip())
    else:
        print('nvidia-smi not found; driver version unknown')
else:
    print('GPU none (CPU smoke run)')"
step gpu_tests 240 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
step step_speed_default "$TIME" "$PYTHON" -m bench.step_speed --model R32_C10 "${BENCH[@]}" --json "$OUT/step_speed_default.json"
step step_speed_amp_cl "$TIME" "$PYTHON" -m bench.step_speed --model R32_C10 "${BENCH[@]}" --amp --channels_last --json "$OUT/step_speed_amp_cl.json"
step classifier_throughput "$TIME" "$PYTHON" -m bench.stage_speed --model R32_C10 --stages classifier_hr "${DEV[@]}" "${DATA[@]}" "${SHORT[@]}" --gpu_data --amp --channels_last --steps $((STEPS * 5)) --json "$OUT/classifier_throughput.json"
step stages_paper_fp32 "$TIME" "$PYTHON" -m bench.stage_speed --model R32_C10 "${DEV[@]}" "${DATA[@]}" "${SHORT[@]}" --steps "$STEPS" --json "$OUT/stages_paper_fp32.json"
step stages_paper_fast "$TIME" "$PYTHON" -m bench.stage_speed --model R32_C10 "${DEV[@]}" "${DATA[@]}" "${SHORT[@]}" --gpu_data --amp --channels_last --steps "$STEPS" --json "$OUT/stages_paper_fast.json"
step memory_r50_fp32 "$TIME" "$PYTHON" -m bench.stage_speed --model R50_ImgNet --stages pretrain finetune "${R50[@]}" --json "$OUT/memory_r50_fp32.json"
step memory_r50_bf16 "$TIME" "$PYTHON" -m bench.stage_speed --model R50_ImgNet --stages pretrain finetune "${R50[@]}" --amp --channels_last --json "$OUT/memory_r50_bf16.json"
if [[ $SMOKE == 1 ]]; then  # inductor's compilation alone takes half a minute on 2 cores; tests/test_speed.py compiles
  printf '%s\t%s\t0\n' compile "n/a: not in the CPU smoke run" >> "$OUT/steps.tsv"
else
  step compile 120 "$PYTHON" -m bench.stage_speed --model R32_C10 --stages classifier_hr --compile "${COMPILE[@]}" --json "$OUT/compile.json"
fi
# Two processes through torchrun: NCCL on two GPUs (gloo on the CPU in the smoke run), one epoch each way.
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [[ $SMOKE == 1 || $GPUS -ge 2 ]]; then
  step two_ranks 120 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 classifier_training.py \
    --cv_dir "$OUT/two_ranks_run" --overwrite --fake_data --train_samples 1024 --test_samples 256 --batch_size 128 \
    --max_epochs 2 --test_interval 1 --num_workers 0 "${DEV[@]}"
else
  printf '%s\t%s\t0\n' two_ranks "n/a: $GPUS GPU visible (needs 2)" >> "$OUT/steps.tsv"
fi

"$PYTHON" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = lambda name: json.loads((out / f"{name}.json").read_text()) if (out / f"{name}.json").is_file() else []
print("## GPU check\n")
print("```\n" + (out / "versions.log").read_text().strip() + "\n```\n")
print("| step | status | seconds |\n|---|---|---|")
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    print(f"| {name} | {status} | {seconds} |")
tests = (out / "gpu_tests.log").read_text().strip().splitlines() if (out / "gpu_tests.log").is_file() else []
print(f"\npytest -m gpu: {tests[-1] if tests else 'no output'}\n")
print("| bench/step_speed.py (batch 256) | options | this code, images/s | reference | ratio |\n|---|---|---|---|---|")
for name in ("step_speed_default", "step_speed_amp_cl"):
    for r in rows(name):
        ours, ref = sorted(r["ours"])[len(r["ours"]) // 2], sorted(r["reference"])[len(r["reference"]) // 2]
        print(f"| {r['stage']} | {r['options']} | {ours:.0f} | {ref:.0f} | {r['ratio']:.2f}x |")
print("\n| stage_speed | stage | options | batch | images/s | first step s | peak GiB | paper epochs | projected h |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("classifier_throughput", "stages_paper_fp32", "stages_paper_fast", "memory_r50_fp32",
             "memory_r50_bf16", "compile"):
    for r in rows(name):
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        hours = f"{r['projected_hours']:.2f}" if r["projected_hours"] is not None else "n/a"
        print(f"| {name} | {r['model']} {r['stage']} | {r['options']} | {r['batch_size']} | "
              f"{r['images_per_second']:.0f} | {r['first_step_s']:.1f} | {memory} | {r['paper_epochs']} | {hours} |")
for name in ("stages_paper_fp32", "stages_paper_fast"):
    total = [r["projected_hours"] for r in rows(name) if r["projected_hours"] is not None]
    if total:
        print(f"\n{name}: the CIFAR-10 paper profile projects to {sum(total) * 60:.0f} min of training "
              f"(five stages, test passes and start-up not included)")
failed = [l for l in (out / "steps.tsv").read_text().splitlines() if l.split("\t")[1] != "ok"
          and not l.split("\t")[1].startswith("n/a")]
print(f"\n{len(failed)} step(s) not ok" + (": " + ", ".join(l.split(chr(9))[0] for l in failed) if failed else ""))
EOF
! grep -v $'\tn/a' "$OUT/steps.tsv" | grep -qv $'\tok\t'
