#!/usr/bin/env bash
# The common-budget runs of configs/ablation.py (Table 3, Table 2, Fig. 6), one after another, nice'd.
#
#   nohup bash configs/ablation_runs.sh > ~/zf-runs/ablation_runs.log 2>&1 &
#
# Resumable: re-run the same command. A finished run returns at once ("Already trained"), a killed
# one resumes from its last checkpoint with the same result. Each run logs to RUNS/NAME/log.txt.
# The base row (zfnet64, seed 0) is the reference run's epoch 10 (configs/reference.py), not run here.
# Environment: RUNS (default ~/zf-runs), DATA (default ../shared/data/tiny-imagenet-100), NICE (10).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$HOME/zf-runs}
DATA=$(realpath "${DATA:-../shared/data/tiny-imagenet-100}")
NICE=${NICE:-10}

run() {  # NAME ARCH [--config.KEY=VALUE ...]
  local name=$1 arch=$2
  shift 2
  mkdir -p "$RUNS/$name"
  echo "$(date -u +%FT%TZ) $name: configs/ablation.py:$arch $*"
  nice -n "$NICE" python train.py --config="configs/ablation.py:$arch" --workdir="$RUNS/$name" \
      --config.manual_dir="$DATA" "$@" >> "$RUNS/$name/log.txt" 2>&1
}

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
# Table 3's depth rows at convergence: NAME's 10-epoch run continued with configs/reference.py's budget and
# stopping rule (up to 40 epochs, stop once the plateau rule is at its floor), in NAME-converged. No schedule
# depends on num_epochs, so a copy of NAME's workdir resumes from epoch 10 with the same result as a fresh run.
converged() {  # NAME ARCH
  local name=$1 arch=$2
  if [ ! -d "$RUNS/$name-converged" ]; then
    rm -rf "$RUNS/$name-converged.copying"
    cp -r "$RUNS/$name" "$RUNS/$name-converged.copying"
    mv "$RUNS/$name-converged.copying" "$RUNS/$name-converged"
  fi
  run "$name-converged" "$arch" --config.num_epochs=40 --config.stop_when_converged=True
}

converged ablation-no-fc67 zfnet64-no-fc67
converged ablation-no-conv34-fc67 zfnet64-no-conv34-fc67
echo "$(date -u +%FT%TZ) all runs done; build the tables with the visualize.py commands in configs/ablation.py"
