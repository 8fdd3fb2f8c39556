"""The paper's model and recipe (sections 3 and 4.1): ZFNet on ImageNet 2012 through TFDS.

  python train.py --config=configs/zfnet_imagenet.py --workdir=workdirs/zfnet_imagenet

Needs the ImageNet 2012 archives placed for TFDS (`imagenet2012` in `data_dir`, see the TFDS docs;
they cannot be downloaded automatically) and a GPU or TPU: the paper took 12 days on one GTX580.
Expected result (Table 2, 1 convnet): top-1 / top-5 validation error 38.4% / 16.5% after 70 epochs
(10-crop); that is val_top1 ~0.62 and val_top5 ~0.84 in metrics.jsonl.

Every other config starts from this one and states what it changes.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Model (Fig. 3) and data (section 3): smallest side resized to 256, center 256x256, 224 crops.
  config.arch = "zfnet"
  config.arch_features = {}          # {layer: width} overrides through models.ablate; {} = as named
  config.dataset = "imagenet2012"
  # Where TFDS prepares datasets (None: $TFDS_DATA_DIR or ~/tensorflow_datasets), and local raw
  # files for datasets that need them, e.g. the ILSVRC2012 tars (see zf_jax.data.get_dataset).
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.manual_dir = ml_collections.config_dict.placeholder(str)
  config.train_split = "train"       # TFDS splits; slices such as "train[:10%]" work too
  config.val_split = "validation"
  # Few-shot training (section 5.2's "from scratch" baseline): N images per class of the training
  # split, drawn by zf_jax.data.few_shot.split_per_class as the transfer study draws them (fold and
  # seed as there; holdout: images per class held out for testing first, for one-split datasets). 0 = all.
  config.train_per_class = 0
  config.train_per_class_fold = 0
  config.train_per_class_seed = 0
  config.train_per_class_holdout = 0
  config.image_size = 256            # S: images are resized and center-cropped to S x S (256 for 224 crops)
  # Optimisation (section 3).
  config.batch_size = 128
  config.learning_rate = 1e-2
  config.momentum = 0.9
  config.weight_decay = 0.0          # the paper states none
  config.weight_std = 1e-2           # weights N(0, std^2) ...
  config.layer_weight_std = {}       # ... except {layer: std} given here
  config.bias_init = 0.0             # biases constant ...
  config.layer_bias_init = {}        # ... except {layer: value} given here
  config.filter_rms_radius = 0.1     # feature scale clipping of conv filters; 0 turns it off (Fig. 6(a))
  config.num_epochs = 70
  # "Anneal the learning rate manually when the validation error plateaus", as a rule: after
  # plateau_patience epochs without the val top-1 error improving by more than plateau_min_delta,
  # divide the learning rate by plateau_factor, never below min_learning_rate.
  config.plateau_patience = 3
  config.plateau_factor = 10.0
  config.plateau_min_delta = 1e-3
  config.min_learning_rate = 1e-5
  config.stop_when_converged = False  # stop early once a plateau is reached at min_learning_rate
  # Evaluation: 10 crops (corners + center, with flips) per validation image, top-1 and top-5.
  config.eval_crops = 10
  config.eval_batch_size = 32        # images per evaluation batch (x eval_crops forward passes)
  # Checkpoints (orbax, workdir/checkpoints): at every epoch end, and every N steps if N > 0.
  # Kept: the ends of keep_epochs (Fig. 4's snapshots) and the latest.
  config.checkpoint_every_steps = 0
  config.keep_epochs = (1, 2, 5, 10, 20, 30, 40, 64)
  config.log_every_steps = 100        # the only host-device sync of the step loop (metrics fetched)
  config.seed = 0
  # Input pipeline (Grain, zf_jax.input_pipeline): worker processes decoding and augmenting ahead of
  # the device (0: read threads of the training process only); per worker (or for the process):
  # read threads and batches buffered. 8 workers for a GPU host of 16+ cores (see bench/RESULTS.md).
  config.grain_workers = 8
  config.grain_read_threads = 2
  config.grain_prefetch = 4
  # Device: "float32", or "bfloat16" activations and convolutions (parameters, optimizer state,
  # loss and softmax stay float32).
  config.compute_dtype = "float32"
  return config
