"""Section 5.1's ablations (Table 3), Table 2's ensemble members and Fig. 6's pair at one common budget.

  python train.py --config=configs/ablation.py:ARCH --workdir=DIR \\
      --config.manual_dir=../shared/data/tiny-imagenet-100 [--config.seed=N] [--config.filter_rms_radius=0]

ARCH (after the colon; default zfnet64) is an architecture name of `zf_jax.models`, e.g.
zfnet64-no-conv34. Choose it there, not with --config.arch: the per-layer initial std follows the
architecture (each layer keeps the gain it has in the paper's full-size counterpart, zfnet-X for
zfnet64-X and alexnet-X for alexnet64-X: `train_lib.paper_gain_std`). Everything else is
configs/reference.py's recipe (center-crop validation during training, the plateau rule, floor 1e-4),
with the common budget of 10 epochs for every run (no early stop, so all end at epoch 10;
checkpoints kept at epochs 1, 2, 5, 10). No schedule depends on num_epochs, so the reference run's
epoch-10 checkpoint is this config's zfnet64 run (seed 0): it is the base row, read with --epoch=10.

The runs of docs/REPRODUCTION.md (about 25-30 min each on 2 free CPU cores), in
configs/ablation_runs.sh, which runs them one after another in this order, nice'd, each resumable:

  name (workdir ~/zf-runs/NAME)  ARCH                   options                       for
  reference                      (configs/reference.py, epoch 10 of it)                Table 3 base, Table 2, Fig. 6
  fig6-alexnet64                 alexnet64                                            Fig. 6, Table 3
  fig6-noclip                    zfnet64                --config.filter_rms_radius=0  Fig. 6, Table 3
  ablation-no-conv34             zfnet64-no-conv34                                    Table 3
  ablation-no-fc67               zfnet64-no-fc67                                      Table 3
  ablation-wide-conv345          zfnet64-wide-conv345                                 Table 3, Table 2 (6th net)
  ablation-seed1                 zfnet64                --config.seed=1               Table 2
  ablation-fc-half               zfnet64-fc-half                                      Table 3
  ablation-fc-double             zfnet64-fc-double                                    Table 3
  ablation-seed2                 zfnet64                --config.seed=2               Table 2
  ablation-no-conv34-fc67        zfnet64-no-conv34-fc67                               Table 3 (depth)
  ablation-no-fc67-converged     zfnet64-no-fc67        --config.num_epochs=40 --config.stop_when_converged=True
  ablation-no-conv34-fc67-converged  zfnet64-no-conv34-fc67  (the same options)
      These two are Table 3's depth rows at convergence: configs/reference.py's budget and stopping rule.
      The script starts each from a copy of its 10-epoch run's workdir, whose 10 epochs it shares.
  Issue 23, seeds 1 and 2 of the three converged rows (`bash configs/ablation_runs.sh seeds`), the same
  options plus the seed; each starts from a copy of its 10-epoch run where there is one, else fresh;
  cheapest first (on this machine's 2 cores: the 4-layer net ~500 img/s, about 1 h; no-fc67 ~340 img/s;
  the base ~160-250 img/s, 2-3 h). Seed 0 of the two depth rows runs again (-rerun-): the first runs'
  checkpoints are lost, and the three-seed tables are built from run records, which need them:
  ablation-no-conv34-fc67-seed1-converged  zfnet64-no-conv34-fc67  (the same options) --config.seed=1
  ablation-no-conv34-fc67-seed2-converged  zfnet64-no-conv34-fc67  (the same options) --config.seed=2
  ablation-no-conv34-fc67-rerun-converged  zfnet64-no-conv34-fc67  (the same options)
  ablation-no-fc67-seed1-converged  zfnet64-no-fc67     (the same options) --config.seed=1
  ablation-no-fc67-seed2-converged  zfnet64-no-fc67     (the same options) --config.seed=2
  ablation-no-fc67-rerun-converged  zfnet64-no-fc67     (the same options)
  ablation-seed1-converged       zfnet64                (the same options) --config.seed=1
  ablation-seed2-converged       zfnet64                (the same options) --config.seed=2
  As each finishes, the script writes its run record into docs/runs/NAME (commit it): its 10-crop val
  top-1/top-5, train error, 10-crop val softmax and metrics, by

  python -m zf_jax.run_record --workdir=$R/NAME --out=docs/runs/NAME

  so the tables below can be built when the checkpoints are gone. The base's seed 0 is the shipped model,
  whose record is in docs/runs/reference-rerun (its run's metrics are there too):

  python -m zf_jax.run_record --model=zfnet64-tiny-imagenet-100 --out=docs/runs/reference-rerun

Then (10-crop validation and the train error are computed from the checkpoints, cached in each workdir):

  R=~/zf-runs
  python visualize.py ablation --epoch=10 --out=docs/figures/table3 --workdirs=$R/reference,\\
$R/ablation-no-conv34,$R/ablation-no-fc67,$R/ablation-no-conv34-fc67,$R/ablation-fc-half,\\
$R/ablation-fc-double,$R/ablation-wide-conv345,$R/fig6-alexnet64,$R/fig6-noclip
  python visualize.py ablation --out=docs/figures/table3-converged \\
      --workdirs=$R/reference,$R/ablation-no-fc67-converged,$R/ablation-no-conv34-fc67-converged
  python visualize.py ensemble --epoch=10 --out=docs/figures/table2 \\
      --workdirs=$R/reference,$R/ablation-seed1,$R/ablation-seed2,$R/ablation-wide-conv345
Issue 23 (three seeds at convergence, from the run records; rows of one variant that differ only in the seed
are grouped), with D=docs/runs; the first command replaces the one-seed table3-converged above, and Table 2 at
convergence goes beside the 10-epoch table2 (whose workdirs are gone):
  python visualize.py ablation --out=docs/figures/table3-converged --workdirs=$D/reference-rerun,\\
$D/ablation-seed1-converged,$D/ablation-seed2-converged,$D/ablation-no-fc67-rerun-converged,\\
$D/ablation-no-fc67-seed1-converged,$D/ablation-no-fc67-seed2-converged,$D/ablation-no-conv34-fc67-rerun-converged,\\
$D/ablation-no-conv34-fc67-seed1-converged,$D/ablation-no-conv34-fc67-seed2-converged
  python visualize.py ensemble --out=docs/figures/table2-converged --workdirs=$D/reference-rerun,\\
$D/ablation-seed1-converged,$D/ablation-seed2-converged,$D/ablation-no-fc67-rerun-converged
Issue 23's transfer numbers (Tables 4-5 / Fig. 9, Table 7) as means over the base's three seeds: seed 0 is the
shipped model; the script runs the same two studies of seeds 1 and 2 into $F/seed1, $F/seed2 once both
have trained (their records first, so that Table 3 and Table 2 are whole before the studies):
  T=../shared/data/tiny-imagenet-transfer-50 F=docs/figures/transfer-models
  python visualize.py transfer --model=zfnet64-tiny-imagenet-100 --target=$T --out=$F/seed0
  python visualize.py probes --model=zfnet64-tiny-imagenet-100 --target=$T --out=$F/seed0
  python visualize.py transfer-seeds --results=$F/seed0,$F/seed1,$F/seed2 --out=docs/figures/transfer-seeds
  python visualize.py filters --workdir=$R/fig6-noclip --compare=$R/fig6-alexnet64

Measured results: docs/REPRODUCTION.md.
"""
import ml_collections

from configs import reference
from zf_jax import models, train_lib

COMMON_EPOCHS = 10


def full_size(arch: str) -> str:
  """The paper's 224-px counterpart of a 64-px architecture name (zfnet64-X -> zfnet-X)."""
  return arch.replace("zfnet64", "zfnet").replace("alexnet64", "alexnet")


def get_config(arch: str = "zfnet64") -> ml_collections.ConfigDict:
  config = reference.get_config()
  config.arch = arch
  if arch in models.ARCH_NAMES and full_size(arch) in models.ARCH_NAMES:
    config.layer_weight_std = train_lib.paper_gain_std(models.get_arch(arch), models.get_arch(full_size(arch)))
  # An unknown ARCH keeps the reference's values: train.py then names the allowed architectures.
  config.num_epochs = COMMON_EPOCHS
  config.stop_when_converged = False
  config.keep_epochs = (1, 2, 5, 10)
  return config
