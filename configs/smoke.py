"""A seconds-long run for the tests: a narrow zfnet64 on 64 synthetic images, 2 epochs of 4 steps.

  python train.py --config=configs/smoke.py --workdir=/tmp/zf_smoke

Offline ("synthetic" is generated locally). It checks the machinery (checkpoints every 2 steps,
resume, metrics, 10-crop evaluation), not accuracy: expect a finite loss and val_top1 near chance.
"""
import ml_collections

from configs import zfnet_imagenet


def get_config() -> ml_collections.ConfigDict:
  config = zfnet_imagenet.get_config()
  config.arch = "zfnet64"
  config.arch_features = {"conv1": 8, "conv2": 8, "conv3": 8, "conv4": 8, "conv5": 8, "fc6": 16, "fc7": 16}
  config.dataset = "synthetic"
  config.image_size = 64
  config.train_split = "train[:64]"
  config.val_split = "validation[:16]"
  config.batch_size = 16
  config.eval_batch_size = 8
  config.num_epochs = 2
  config.checkpoint_every_steps = 2
  config.keep_epochs = (1,)
  config.log_every_steps = 2
  config.grain_workers = 0           # read threads only: no worker processes to start
  return config
