#!/usr/bin/env bash
# The common-budget runs of configs/ablation.py (Table 3, Table 2, Fig. 6), one after another, nice'd.
#
#   nohup bash configs/ablation_runs.sh [GROUP ...] >> ~/zf-runs/ablation_runs.log 2>&1 &
#
# GROUPs, in this order when none is named: common (the 10-epoch runs), converged (Table 3's depth rows
# at convergence), seeds (issue 23: seeds 1 and 2 of the three converged rows of Table 3).
#
# Resumable: re-run the same command. A finished run returns at once ("Already trained"), a killed
# one resumes from its last checkpoint (or starts over, if killed before its first) with the same result.
# Each run logs to RUNS/NAME/log.txt.
# The base row (zfnet64, seed 0) is the reference run's epoch 10 (configs/reference.py), not run here.
# Environment: RUNS (default ~/zf-runs), DATA (default ../shared/data/tiny-imagenet-100), NICE (10), RECORDS
# (default docs/runs: where the converged runs' records go), TARGET (../shared/data/tiny-imagenet-transfer-50) and
# STUDIES (docs/figures/transfer-models: where the base seeds' transfer and probes studies go).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$HOME/zf-runs}
DATA=$(realpath "${DATA:-../shared/data/tiny-imagenet-100}")
NICE=${NICE:-10}
RECORDS=${RECORDS:-docs/runs}
TARGET=${TARGET:-../shared/data/tiny-imagenet-transfer-50}  # as given: the studies' JSON names it
STUDIES=${STUDIES:-docs/figures/transfer-models}

run() {  # NAME ARCH [--config.KEY=VALUE ...]
  local name=$1 arch=$2
  shift 2
  mkdir -p "$RUNS/$name"
  echo "$(date -u +%FT%TZ) $name: configs/ablation.py:$arch $*"
  nice -n "$NICE" python train.py --config="configs/ablation.py:$arch" --workdir="$RUNS/$name" \
      --config.manual_dir="$DATA" "$@" >> "$RUNS/$name/log.txt" 2>&1
}

# NAME's run with configs/reference.py's budget and stopping rule (up to 40 epochs, stop once the plateau rule
# is at its floor), in NAME-converged. No schedule depends on num_epochs, so where NAME's 10-epoch run is there,
# a copy of its workdir resumes from epoch 10 with the same result as a fresh run; else it starts fresh.
# Once it has finished, its run record (evaluations, softmax and metrics: zf_jax.run_record) is written to
# RECORDS/NAME-converged, unless one is there; commit it. A run whose record is there and whose workdir is gone
# (a new machine) is not trained again.
converged() {  # NAME ARCH [--config.KEY=VALUE ...]
  local name=$1 arch=$2
  shift 2
  if [ -f "$RECORDS/$name-converged/evaluation.json" ] && [ ! -d "$RUNS/$name-converged" ]; then
    echo "$(date -u +%FT%TZ) $name-converged: skipped, its run record is in $RECORDS and its workdir is gone"
    return
  fi
  if [ ! -d "$RUNS/$name-converged" ] && [ -d "$RUNS/$name" ]; then
    rm -rf "$RUNS/$name-converged.copying"
    cp -r "$RUNS/$name" "$RUNS/$name-converged.copying"
    mv "$RUNS/$name-converged.copying" "$RUNS/$name-converged"
  fi
  run "$name-converged" "$arch" --config.num_epochs=40 --config.stop_when_converged=True "$@"
  if [ ! -f "$RECORDS/$name-converged/evaluation.json" ]; then
    echo "$(date -u +%FT%TZ) $name-converged: its run record, in $RECORDS/$name-converged"
    nice -n "$NICE" python -m zf_jax.run_record --workdir="$RUNS/$name-converged" --out="$RECORDS/$name-converged" \
        >> "$RUNS/$name-converged/log.txt" 2>&1 || echo "$(date -u +%FT%TZ) $name-converged: no run record (see its log.txt)"
  fi
}

# Tables 4-5 / Fig. 9 and Table 7 of a finished run (`visualize.py transfer` and `probes` on TARGET, default
# settings), into STUDIES/FOLDER, unless its probes.json is there; commit it. Issue 23 averages them over the
# base's seeds: `visualize.py transfer-seeds` (configs/ablation.py).
studies() {  # NAME FOLDER
  local name=$1 folder=$STUDIES/$2
  [ -f "$folder/probes.json" ] && return
  echo "$(date -u +%FT%TZ) $name: transfer and probes on $TARGET, in $folder"
  for command in transfer probes; do
    nice -n "$NICE" python visualize.py "$command" --workdir="$RUNS/$name" --target="$TARGET" --out="$folder" \
        >> "$RUNS/$name/log.txt" 2>&1 || { echo "$(date -u +%FT%TZ) $name: no $command study (see its log.txt)"; return; }
  done
}

common() {
  run fig6-alexnet64 alexnet64
  run fig6-noclip zfnet64 --config.filter_rms_radius=0
  run ablation-no-conv34 zfnet64-no-conv34
  run ablation-no-fc67 zfnet64-no-fc67
  run ablation-wide-conv345 zfnet64-wide-conv345
  run ablation-seed1 zfnet64 --config.seed=1
  run ablation-fc-half zfnet64-fc-half
  run ablation-fc-double zfnet64-fc-double
  run ablation-seed2 zfnet64 --config.seed=2
  run ablation-no-conv34-fc67 zfnet64-no-conv34-fc67
}

converged_rows() {  # Table 3's depth rows at convergence (seed 0; the base row is the reference run)
  converged ablation-no-fc67 zfnet64-no-fc67
  converged ablation-no-conv34-fc67 zfnet64-no-conv34-fc67
}

# issue 23: seeds 1 and 2 of the three converged rows, cheapest first, so that a session finishes whole runs
# (on 2 cores: the 4-layer net ~500 img/s, no-fc67 ~340, the base ~160-250), and seed 0 of the two depth rows
# again (NAME-rerun-converged): the checkpoints of their first runs were lost with the machine on 2026-12-05, and
# each row of the three-seed tables is built from a run record (python -m zf_jax.run_record), which needs them.
# The base's seed 0 is the shipped model (docs/runs/reference-rerun). Both base seeds train before their transfer
# studies, so that Table 3 and Table 2 (run records only) are whole first.
seeds() {
  converged ablation-no-conv34-fc67-seed1 zfnet64-no-conv34-fc67 --config.seed=1
  converged ablation-no-conv34-fc67-seed2 zfnet64-no-conv34-fc67 --config.seed=2
  converged ablation-no-conv34-fc67-rerun zfnet64-no-conv34-fc67
  converged ablation-no-fc67-seed1 zfnet64-no-fc67 --config.seed=1
  converged ablation-no-fc67-seed2 zfnet64-no-fc67 --config.seed=2
  converged ablation-no-fc67-rerun zfnet64-no-fc67
  converged ablation-seed1 zfnet64 --config.seed=1
  converged ablation-seed2 zfnet64 --config.seed=2
  studies ablation-seed1-converged seed1
  studies ablation-seed2-converged seed2
}

for group in "${@:-common converged seeds}"; do
  for g in $group; do
    case $g in
      common) common ;;
      converged) converged_rows ;;
      seeds) seeds ;;
      *) echo "configs/ablation_runs.sh: unknown group '$g'; allowed: common, converged, seeds" >&2; exit 2 ;;
    esac
  done
done
echo "$(date -u +%FT%TZ) runs done; build the tables with the visualize.py commands in configs/ablation.py"
