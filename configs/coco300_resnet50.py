"""SSD300-ResNet50 on COCO, as NVIDIA's DeepLearningExamples builds and trains it.

Train from torchvision's ImageNet ResNet-50 (their recipe: 65 epochs at batch
32, SGD momentum 0.9, lr 2.6e-3 per 32 images scaled linearly with the batch,
x0.1 after epochs 43 and 54, a 300-step warmup, weight decay 5e-4 on weights
only; their COCO AP is about 0.27 after it):
  python -m ssd_jax.convert --format=resnet50 --input=resnet50-11ad3fa6.pth --output=/tmp/resnet50
  python -m ssd_jax.main --config=configs/coco300_resnet50.py --workdir=/tmp/coco300_resnet50 --config.model.init_checkpoint=/tmp/resnet50
(or --config.model.init_from=resnet50_imagenet, which downloads and converts it
once).

Or convert NVIDIA's published checkpoint (torch.hub's nvidia_ssd) and detect
with it; the converter writes this config as config.json, so --mode=eval on the
same workdir evaluates it on COCO val2017 (prepared in TFDS):
  python -m ssd_jax.convert --format=nvidia_ssd300 --input=nvidia_ssdpyt_amp_200703.pt --output=/tmp/nvidia_ssd300
  python -m ssd_jax.main --mode=predict --workdir=/tmp/nvidia_ssd300 --input=photos/

Every value is `models.resnet.nvidia_ssd300()` (architecture preset
'ssd300_resnet50'); where ssd_jax trains differently: docs/models.md.
"""
from ssd_jax.models import resnet


def get_config():
  return resnet.nvidia_ssd300()
