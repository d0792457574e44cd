#!/usr/bin/env bash
# One prepared GPU run (issue 18): step costs of the plain, margin and mixed-precision steps for
# the MLP and LeNet-5 at batch 100 and 1000; one full-data MLP l2 run of 100 epochs, timed; and
# DeepFool and FMN on the 10,000 test digits of that run's model.
#
#   bash benchmarks/gpu.sh OUT_DIR --backend jax        # JAX with CUDA (no TensorFlow needed)
#   bash benchmarks/gpu.sh OUT_DIR --backend tensorflow # TensorFlow with CUDA (the cuda extra)
#   bash benchmarks/gpu.sh OUT_DIR --backend tensorflow --tiny   # minutes on a CPU: a check
#
# MNIST_DIR names a folder with MNIST's files for the 100-epoch run (else the sample embedded
# in the package, as a QUICK run). The JAX path needs JAX with CUDA, the keras wheel with its
# pure-Python needs and this package on PYTHONPATH; e.g. with wheels carried in .whl/:
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site:. bash benchmarks/gpu.sh $OUT --backend jax
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [--backend jax|tensorflow] [--tiny]}
shift
backend=tensorflow
tiny=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend=$2; shift 2 ;;
    --tiny) tiny=1; shift ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 KERAS_BACKEND="$backend"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
  || echo "no GPU: $(grep -m1 'model name' /proc/cpuinfo)") | tee "$out/device.txt"
python -c "import keras; print('Keras', keras.__version__, keras.backend.backend())" \
  | tee -a "$out/device.txt"

if [ "$tiny" = 1 ]; then
  sizes=(--models mlp --steps 2 --rounds 1); batches=(16); epochs=1; data=(--quick)
  evaluate=(--n 50 --steps 5)
else
  sizes=(--models mlp,lenet5 --steps 20 --rounds 3); batches=(100 1000); epochs=100
  data=(${MNIST_DIR:+--data-dir "$MNIST_DIR"}); [ -n "${MNIST_DIR:-}" ] || data=(--quick)
  evaluate=(--n 10000 --steps 100)
fi

# 1. Step costs (the FLOP count needs JAX; on a TensorFlow-only machine it is left out).
for batch in "${batches[@]}"; do
  timeout 300 python benchmarks/step_cost.py --backend "$backend" "${sizes[@]}" \
    --batch "$batch" --out "$out/step_cost_$batch.json" 2>"$out/step_cost_$batch.log" \
    | tee "$out/step_cost_$batch.md"
done

# 2. One MLP l2 run of $epochs epochs (the paper's protocol), timed.
start=$(date +%s)
timeout 1200 python -m keras_margin.experiments.cli reproduce table1 --rows mlp-l2 \
  --epochs "$epochs" "${data[@]}" --out "$out/runs" --verbose 2 2>&1 | tail -n 5 \
  | tee "$out/mlp_l2_run.log"
echo "MLP l2, epochs: $epochs, $(( $(date +%s) - start )) s (training, per-epoch robustness" \
  "and the final evaluation)" | tee -a "$out/mlp_l2_run.log"

# 3. DeepFool (in the run's own evaluation) and FMN on the test digits, timed.
start=$(date +%s)
timeout 600 python -m keras_margin.experiments.cli evaluate "$out/runs" \
  ${MNIST_DIR:+--data-dir "$MNIST_DIR"} \
  --attacks fmn --linf-eps "" "${evaluate[@]}" --batch-size 1000 --tag gpu 2>&1 \
  | tail -n 12 | tee "$out/attacks.log"
echo "FMN (and DeepFool) on the test digits: $(( $(date +%s) - start )) s" \
  | tee -a "$out/attacks.log"
