#!/usr/bin/env bash
# Issue 22's standing Table I queue: train, then evaluate (stronger, boxed, certified) each run,
# one at a time, at low priority, into a folder outside the work tree so a later session on the
# same machine resumes it (runs checkpoint every epoch; finished evaluations are skipped).
#   nohup setsid bash docs/results/queue.sh DATA_DIR [OUT] > OUT/queue.log 2>&1 &
# Pause for a benchmark: kill -STOP -- -PGID; resume: kill -CONT -- -PGID.
# Publish what finished: keras-margin publish OUT docs/results/runs
# AUTOATTACK_DIR (a folder holding fra31/auto-attack's autoattack/) adds issue 25's benchmark.
set -uo pipefail
data=${1:?usage: queue.sh DATA_DIR [OUT]}
out=${2:-$HOME/keras-margin-runs}
km="nice -n 10 keras-margin"
step() { echo "== $(date -u +%FT%TZ) $*"; "$@" || echo "== failed ($?): $*"; }
evaluate() {  # the published rows' three evaluations of one finished run folder
  local f=$1
  step $km evaluate "$f" --data-dir "$data"
  step $km evaluate "$f" --data-dir "$data" --box 0,1 --tag boxed --attacks "" --linf-eps ""
  step $km evaluate "$f" --data-dir "$data" --n 100 --attacks fmn,ddn,fmn_linf \
    --linf-eps 0.01,0.03 --l2-eps 0.1,0.3 --certify crown --tag certified
}
# Item 1, shortest first (a run that cannot resume on another machine loses least):
# LeNet-5 l2 and l1 (10 epochs), MLP l1 (20 epochs).
for row in lenet5-l2 lenet5-l1 mlp-l1; do
  arch=${row%%-*}; epochs=$([ "$arch" = mlp ] && echo 20 || echo 10)
  step $km reproduce table1 --rows "$row" --epochs "$epochs" --data-dir "$data" --out "$out"
  evaluate "$out/table1/$row/mnist-e$epochs-reference-float32/seed-0"
done
# Item 2: seeds 1 and 2 (--seeds 3 skips a finished seed 0; on a machine without it, copy the
# published seed-0 folder into OUT first). Cheapest rows first, so a session's stop loses least.
for row in lenet5-baseline lenet5-l2 mlp-baseline lenet5-l1 mlp-l2 mlp-l1; do
  arch=${row%%-*}; epochs=$([ "$arch" = mlp ] && echo 20 || echo 10)
  step $km reproduce table1 --rows "$row" --seeds 3 --epochs "$epochs" --data-dir "$data" \
    --out "$out"
done
# Item 2's evaluations: the stronger table shows a row only when every seed has them.
for row in lenet5-l2 lenet5-l1 mlp-l1 lenet5-baseline mlp-baseline mlp-l2; do
  arch=${row%%-*}; epochs=$([ "$arch" = mlp ] && echo 20 || echo 10)
  for seed in 1 2 0; do  # seed 0 for an evaluation it lacks (LeNet-5 baseline's certified)
    evaluate "$out/table1/$row/mnist-e$epochs-reference-float32/seed-$seed"
  done
done
# Item 3: the paper's 100 epochs, one seed, the robustness callback every 5 epochs (and the
# first and last; recorded in config.json as monitor_every); MLP first, then LeNet-5.
for row in mlp-baseline mlp-l2 lenet5-baseline lenet5-l2; do
  step $km reproduce table1 --rows "$row" --epochs 100 --monitor-every 5 --data-dir "$data" \
    --out "$out"
  evaluate "$out/table1/$row/mnist-e100-reference-float32/seed-0"
done
# Issue 25: AutoAttack's standard ensemble on every published Table I run (l_inf 0.1; AT rows
# also 0.3), then the comparison with the reference AutoAttack (seed 0 of every cell first).
for folder in "$out"/table1/*/mnist-e*-reference-float32/seed-*; do
  case "$folder" in */mlp-at/*|*/lenet5-at/*) eps=0.1,0.3 ;; *) eps=0.1 ;; esac
  step $km evaluate "$folder" --data-dir "$data" --autoattack --tag autoattack --attacks "" \
    --linf-eps "$eps" --box 0,1
done
if [ -n "${AUTOATTACK_DIR:-}" ]; then
  for seeds in 1 3; do
    step nice -n 10 python benchmarks/autoattack_vs_reference.py --data-dir "$data" \
      --reference "$AUTOATTACK_DIR" --seeds "$seeds" --out "$out/autoattack_vs_reference.jsonl"
  done
fi
echo "== $(date -u +%FT%TZ) queue done"
