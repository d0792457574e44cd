#!/usr/bin/env bash
# Issue 22's standing Table I queue: train, then evaluate (stronger, boxed, certified) each run,
# one at a time, at low priority, into a folder outside the work tree so a later session on the
# same machine resumes it (runs checkpoint every epoch; finished evaluations are skipped).
# Run it from the repository root: what docs/results/runs already publishes is never redone,
# so a fresh machine (no run folders) goes straight to what is left.
#   nohup setsid bash docs/results/queue.sh DATA_DIR [OUT] > OUT/queue.log 2>&1 &
# Pause for a benchmark: kill -STOP -- -PGID; resume: kill -CONT -- -PGID.
# Publish what finished: keras-margin publish OUT docs/results/runs
# AUTOATTACK_DIR (a folder holding fra31/auto-attack's autoattack/) adds issue 25's benchmark.
set -uo pipefail
data=${1:?usage: queue.sh DATA_DIR [OUT]}
out=${2:-$HOME/keras-margin-runs}
published=docs/results/runs
km=${QUEUE_KM:-nice -n 10 keras-margin}  # QUEUE_KM: a stand-in, for a dry run
step() { echo "== $(date -u +%FT%TZ) $*"; "$@" || echo "== failed ($?): $*"; }
folder() { echo "table1/$1/mnist-e$2-reference-float32/seed-$3"; }  # row epochs seed
is_published() { [ -f "$published/$1/$2" ]; }  # run (as folder prints it), file
done_already() {  # run evaluation: published, and not named in $redo
  is_published "$1" "$2.json" && [[ " ${redo:-} " != *" $2 "* ]]
}
evaluate() {  # the published rows' three evaluations of one finished run, unless published
  local run=$1 f=$out/$1
  if [ ! -f "$f/model.keras" ]; then echo "== no model in $f: evaluations skipped"; return; fi
  done_already "$run" robustness || step $km evaluate "$f" --data-dir "$data"
  done_already "$run" robustness-boxed || step $km evaluate "$f" --data-dir "$data" \
    --box 0,1 --tag boxed --attacks "" --linf-eps ""
  done_already "$run" robustness-certified || step $km evaluate "$f" --data-dir "$data" \
    --n 100 --attacks fmn,ddn,fmn_linf --linf-eps 0.01,0.03 --l2-eps 0.1,0.3 --certify crown \
    --tag certified
}
seed_in() {  # dest run: a published seed as finished there (reproduce skips a folder with these two)
  [ -f "$1/$2/metrics.json" ] || { mkdir -p "$1/$2" &&
    cp "$published/$2/config.json" "$published/$2/metrics.json" "$1/$2/"; }
}
train() {  # row epochs seeds [extra reproduce options]: seeds 0..seeds-1, published ones skipped
  local row=$1 epochs=$2 seeds=$3 seed todo=0; shift 3
  for ((seed = 0; seed < seeds; seed++)); do
    local run; run=$(folder "$row" "$epochs" "$seed")
    if is_published "$run" metrics.json; then seed_in "$out" "$run"; else todo=1; fi
  done
  [ "$todo" = 1 ] || { echo "== $row ($epochs epochs, $seeds seeds): published"; return; }
  step $km reproduce table1 --rows "$row" --seeds "$seeds" --epochs "$epochs" \
    --data-dir "$data" --out "$out" "$@"
}
epochs_of() { [ "${1%%-*}" = mlp ] && echo 20 || echo 10; }
# Item 1 (one seed), then item 2 (seeds 1 and 2), cheapest rows first: a session's stop loses
# least where the next session is on another machine.
for row in lenet5-l2 lenet5-l1 mlp-l1; do train "$row" "$(epochs_of "$row")" 1; done
for row in lenet5-baseline lenet5-l2 mlp-baseline lenet5-l1 mlp-l2 mlp-l1; do
  train "$row" "$(epochs_of "$row")" 3
done
# Their evaluations: the stronger table shows a row only when every seed has them.
for row in lenet5-l2 lenet5-l1 mlp-l1 lenet5-baseline mlp-baseline mlp-l2; do
  for seed in 0 1 2; do evaluate "$(folder "$row" "$(epochs_of "$row")" "$seed")"; done
done
same_training() {  # published metrics.json, new metrics.json: the same numbers, to the bit
  python -c 'import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
keys = ("error", "rho_adv", "fgsm_error", "rho_min", "unfooled")
sys.exit(any(a.get(k) != b.get(k) for k in keys))' "$1" "$2"
}
again() {  # row seed: a published run that lacks an evaluation and whose model is not here
  local row=$1 seed=$2 s epochs run o=$out/again
  epochs=$(epochs_of "$row"); run=$(folder "$row" "$epochs" "$seed")
  [ -f "$out/$run/model.keras" ] && return  # evaluated above
  local e missing=0
  for e in robustness robustness-boxed robustness-certified; do
    done_already "$run" "$e" || missing=1
  done
  [ "$missing" = 1 ] || { echo "== $run: every evaluation published"; return; }
  for ((s = 0; s < seed; s++)); do seed_in "$o" "$(folder "$row" "$epochs" "$s")"; done
  step $km reproduce table1 --rows "$row" --seeds $((seed + 1)) --epochs "$epochs" \
    --data-dir "$data" --out "$o"
  [ -f "$o/$run/metrics.json" ] || return
  if same_training "$published/$run/metrics.json" "$o/$run/metrics.json"; then
    echo "== $run trained again: the published numbers to the bit"
    out=$o evaluate "$run"  # only the evaluation it lacks
  else  # another training: all three evaluations, to republish the run whole
    echo "== $run trained again: other numbers than the published run's"
    out=$o published=/nonexistent evaluate "$run"
  fi
}
# Item 2's gaps: certified evaluations of two runs whose models were on an earlier machine.
again lenet5-baseline 0
again mlp-l2 2
# Issue 27: certified training (CROWN-IBP, the "certified" table; 20 epochs), l_inf 0.1 first,
# then each run's evaluations: the stronger attacks inside [0, 1], and certify (CROWN) at its
# training budget beside Table I's budgets, on the same 100 digits as Table I's.
hidden() {  # row of the "hidden" table (issue 26): one seed, then the stronger evaluation
  local f
  if compgen -G "$published/hidden/$1/*/seed-0/robustness.json" > /dev/null; then
    echo "== hidden/$1: published"; return
  fi
  step $km reproduce hidden --rows "$1" --seeds 1 --data-dir "$data" --out "$out"
  for f in "$out"/hidden/"$1"/mnist-e*-reference-float32/seed-0; do
    [ -f "$f/model.keras" ] || continue
    is_published "hidden/${f#*/hidden/}" robustness.json || \
      step $km evaluate "$f" --data-dir "$data"
  done
}
for row in mlp-large-margin lenet5-large-margin mlp-l2-hidden lenet5-l2-hidden; do
  hidden "$row"
done
certified() {  # row
  local f
  if compgen -G "$published/certified/$1/*/seed-0/robustness-certified.json" > /dev/null; then
    echo "== certified/$1: published"; return
  fi
  step $km reproduce certified --rows "$1" --seeds 1 --data-dir "$data" --out "$out"
  for f in "$out"/certified/"$1"/mnist-e*-boxed-float32/seed-0; do
    [ -f "$f/model.keras" ] || continue
    is_published "certified/${f#*/certified/}" robustness.json || \
      step $km evaluate "$f" --data-dir "$data" --box 0,1
    is_published "certified/${f#*/certified/}" robustness-certified.json || \
      step $km evaluate "$f" --data-dir "$data" --n 100 --attacks fmn,ddn,fmn_linf \
        --linf-eps 0.01,0.03,0.1,0.3 --l2-eps 0.1,0.3,1 --certify crown --tag certified
  done
}
for row in mlp-crown-ibp-linf-0.1 lenet5-crown-ibp-linf-0.1 mlp-crown-ibp-l2-1 \
           mlp-lipschitz-l2-1 mlp-crown-ibp-linf-0.3 lenet5-crown-ibp-l2-1 \
           lenet5-lipschitz-l2-1 lenet5-crown-ibp-linf-0.3; do
  certified "$row"
done
# Issues 28 and 30: certified evaluations published before the bounds' routes were recorded
# (577c004: LeNet-5's second convolution by intervals, and before 797627f no rounding
# allowance), evaluated again; a run whose model is gone is trained again first (again()), and
# republished whole if its training does not give the published numbers to the bit.
unrouted() {  # run: its published certified evaluation records no route
  local f=$published/$1/robustness-certified.json
  [ -f "$f" ] && python -c 'import json, sys
sys.exit(any(k.startswith("certify_route_") for k in json.load(open(sys.argv[1]))))' "$f"
}
for row in lenet5-baseline lenet5-l2 lenet5-l1 mlp-baseline mlp-l2 mlp-l1 mlp-at mlp-vat; do
  for seed in 0 1 2; do
    run=$(folder "$row" "$(epochs_of "$row")" "$seed")
    unrouted "$run" || continue
    if [ -f "$out/$run/model.keras" ]; then redo=robustness-certified evaluate "$run"
    else redo=robustness-certified again "$row" "$seed"; fi
  done
done
run=$(folder mlp-baseline 100 0)
unrouted "$run" && redo=robustness-certified evaluate "$run"
# Item 3: the paper's 100 epochs, one seed, after the shorter runs above (a session's machine
# may be gone by the next, and LeNet-5 l2's 100 epochs outlast one session here), the
# robustness callback every 5 epochs (and the first and last; recorded in config.json as
# monitor_every); MLP first, then LeNet-5.
for row in mlp-baseline mlp-l2 lenet5-baseline lenet5-l2; do
  train "$row" 100 1 --monitor-every 5
  evaluate "$(folder "$row" 100 0)"
done
# Issue 25: AutoAttack's standard ensemble on every published Table I run (l_inf 0.1; AT rows
# also 0.3), then the comparison with the reference AutoAttack (seed 0 of every cell first).
for folder in "$out"/table1/*/mnist-e*-reference-float32/seed-* \
              "$out"/again/table1/*/mnist-e*-reference-float32/seed-*; do
  [ -f "$folder/model.keras" ] || continue
  is_published "table1/${folder#*/table1/}" robustness-autoattack.json && continue
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
