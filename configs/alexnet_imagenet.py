"""Krizhevsky et al.'s layout with dense connections, the paper's baseline (sections 3 and 4.1).

  python train.py --config=configs/alexnet_imagenet.py --workdir=workdirs/alexnet_imagenet

Same data and recipe as configs/zfnet_imagenet.py, only the architecture differs (conv1 11x11
stride 4, conv2 stride 1). Expected result (Table 2, "Krizhevsky et al. 1 convnet", our replication):
top-1 / top-5 validation error ~40.5% / ~18.1% (val_top1 ~0.59, val_top5 ~0.82).
"""
import ml_collections

from configs import zfnet_imagenet


def get_config() -> ml_collections.ConfigDict:
  config = zfnet_imagenet.get_config()
  config.arch = "alexnet"
  return config
