#!/usr/bin/env bash
# One prepared GPU run (under 8 minutes on one modern GPU): the step-cost table with XLA on and
# off, and a short MNIST-shaped training of every trainer, for the MLP and LeNet-5.
# It needs TensorFlow with CUDA in the current Python (pip install -e ".[cuda]").
#
#   bash benchmarks/gpu.sh OUT_DIR
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); \
print('TF', tf.__version__, 'GPUs:', gpus); assert gpus, 'no GPU visible to TensorFlow'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || true
timeout 240 python benchmarks/step_cost.py --models mlp,lenet5 --batch 100 1000 --xla both \
  --steps 20 --rounds 3 --out "$out/step_cost.json" 2>&1 | tee "$out/step_cost.md"
for model in mlp lenet5; do
  timeout 90 python benchmarks/train_speed.py --model "$model" --jit on --steps 50 \
    --out "$out/train_speed_$model.json" 2>&1 | tee "$out/train_speed_$model.md"
done
