#!/usr/bin/env bash
# The figures certify still lacks from a GPU, in one run of under 8 minutes on one H100 or
# H200: IBP evaluation speed of the seed's CIFAR `cnn`, CROWN on 100 CIFAR images, bab
# on four hard MNIST instances, one training epoch of the CIFAR preset, and `certify eval` under torchrun with every
# GPU against one. Each step prints what it measured; nothing is written outside a
# temporary folder.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--data-dir DIR] [--models-dir DIR] [--quick]
#
# --quick runs every step on a few images (the test suite runs it with --device cpu so
# that the script cannot rot); the defaults are the data and models beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
device=cuda
data_dir="$root/../shared/data"
models_dir="$root/../shared/models"
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --models-dir) models_dir="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (use --device, --data-dir, --models-dir, --quick)" >&2; exit 2 ;;
  esac
done
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ "$quick" = 1 ]; then
  ibp_images=256; crown_images=4; train_images=200; eval_images=16; repeats=1; bab_count=1
  bab_timeout=2
else
  ibp_images=""; crown_images=100; train_images=""; eval_images=2000; repeats=3; bab_count=4; bab_timeout=60
fi
bab_images="1206 to $((1206 + bab_count - 1))"
step() { echo; echo "== $*"; }

step "machine"
"$py" - "$device" <<'PY'
import sys, torch
device = sys.argv[1]
print("torch", torch.__version__, "| device", device, end="")
if device.startswith("cuda"):
    print(" |", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0))
else:
    print(" | CPU threads", torch.get_num_threads())
PY

step "IBP evaluation of the seed's CIFAR cnn (random weights) against a clean forward pass"
ibp_args=(--arch cnn --dataset cifar --data-dir "$data_dir" --device "$device" --methods ibp
          --repeats "$repeats")
[ -n "$ibp_images" ] && ibp_args+=(--num-samples "$ibp_images")
"$py" benchmarks/eval_speed.py "${ibp_args[@]}"

step "CROWN on $crown_images CIFAR images of cifar10_resnet_4b.onnx at eps 1/255"
"$py" -m certify eval "$models_dir/cifar10_resnet_4b.onnx" --dataset cifar --eps 1/255 \
  --mean 0.4914,0.4822,0.4465 --std 0.2471,0.2435,0.2616 --data-dir "$data_dir" \
  --num-samples "$crown_images" --methods crown --every-method --pgd-steps 10 \
  --device "$device" --json > "$work/crown.json"
"$py" - "$work/crown.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
crown = r["verified_error"]["crown"]
print(f"{r['num_samples']} images: CROWN verified error {crown:.4f}, "
      f"{r['seconds']['crown']:.1f} s of CROWN ({r['device']})")
PY

step "bab on mnistfc_256x4.onnx at eps 0.03, images $bab_images, $bab_timeout s per image"
"$py" -m certify eval "$models_dir/mnistfc_256x4.onnx" --dataset mnist --eps 0.03 \
  --data-dir "$data_dir" --start 1206 --num-samples "$bab_count" --methods crown,bab \
  --timeout "$bab_timeout" --device "$device" --json > "$work/bab.json"
"$py" - "$work/bab.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['num_samples']} images: bab {r['bab']}, {r['seconds']['bab']:.1f} s of bab "
      f"({r['device']})")
PY

step "one training epoch of the cifar preset"
train_args=(--preset cifar --data-dir "$data_dir" --out-dir "$work/train" --epochs 1
            --no-final-eval --device "$device" --val-size 100)
[ -n "$train_images" ] && train_args+=(--num-train "$train_images")
"$py" -m certify train "${train_args[@]}" 2>&1 | grep -E "^epoch|images" || true
"$py" - "$work/train/train_log.csv" <<'PY'
import csv, sys
row = list(csv.DictReader(open(sys.argv[1])))[-1]
print(f"epoch time {float(row['epoch_seconds']):.1f} s")
PY

step "certify eval of the bundled model on $eval_images MNIST test images: every GPU against one"
gpus=1
if [[ "$device" == cuda* ]]; then gpus="$("$py" -c 'import torch; print(torch.cuda.device_count())')"; fi
for n in 1 "$gpus"; do
  start=$(date +%s.%N)
  if [ "$n" = 1 ]; then
    "$py" -m certify eval --data-dir "$data_dir" --num-samples "$eval_images" \
      --device "$device" --out "$work/eval_$n.csv" >/dev/null 2>&1
  else
    "$py" -m torch.distributed.run --standalone --nproc-per-node "$n" -m certify eval \
      --data-dir "$data_dir" --num-samples "$eval_images" --device "$device" \
      --out "$work/eval_$n.csv" >/dev/null 2>&1
  fi
  end=$(date +%s.%N)
  "$py" -c 'import sys; print(f"{sys.argv[1]} process(es): {float(sys.argv[3]) - float(sys.argv[2]):.1f} s wall")' "$n" "$start" "$end"
  [ "$gpus" = 1 ] && break
done
