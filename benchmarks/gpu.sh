#!/usr/bin/env bash
# One prepared GPU run (under 8 minutes on one modern GPU): step costs against a plain step,
# the trainers' throughput, and one timed MLP l2 epoch on real MNIST.
#
#   bash benchmarks/gpu.sh OUT_DIR                 # TensorFlow with CUDA (pip install -e ".[cuda]")
#   bash benchmarks/gpu.sh OUT_DIR --backend jax   # a machine with JAX (CUDA) and no TensorFlow
#
# The JAX path needs nothing but JAX with CUDA, the keras wheel with its pure-Python needs and
# this package on PYTHONPATH; e.g. with wheels carried in .whl/ (see the device README):
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site:. bash benchmarks/gpu.sh $OUT --backend jax
# Its MNIST epoch reads --data-dir if MNIST_DIR is set, else the sample embedded in the package.
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [--backend tensorflow|jax]}
backend=${3:-tensorflow}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 KERAS_BACKEND="$backend"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || true
data=${MNIST_DIR:+--data-dir $MNIST_DIR}
if [ "$backend" = jax ]; then
  python -c "import jax; d = jax.devices(); print('JAX', jax.__version__, d); \
assert d[0].platform == 'gpu', 'no GPU visible to JAX'"
  timeout 240 python benchmarks/step_cost.py --models mlp,lenet5 --batch 100 1000 \
    --steps 20 --rounds 3 --out "$out/step_cost_jax.json" 2>&1 | tee "$out/step_cost_jax.md"
  timeout 150 python benchmarks/train_speed.py --model mlp --steps 50 --epoch-on-mnist $data \
    --out "$out/train_speed_jax.json" 2>&1 | tee "$out/train_speed_jax.md"
else
  python -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); \
print('TF', tf.__version__, 'GPUs:', gpus); assert gpus, 'no GPU visible to TensorFlow'"
  timeout 240 python benchmarks/step_cost.py --models mlp,lenet5 --batch 100 1000 --xla both \
    --steps 20 --rounds 3 --out "$out/step_cost.json" 2>&1 | tee "$out/step_cost.md"
  for model in mlp lenet5; do
    timeout 90 python benchmarks/train_speed.py --model "$model" --jit on --steps 50 \
      --out "$out/train_speed_$model.json" 2>&1 | tee "$out/train_speed_$model.md"
  done
  timeout 120 python benchmarks/train_speed.py --model mlp --steps 5 --epoch-on-mnist $data \
    --jit on --out "$out/epoch.json" 2>&1 | tee "$out/epoch.md"
fi
