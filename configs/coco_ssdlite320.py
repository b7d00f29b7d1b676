"""SSDLite320-MobileNetV3-Large on COCO, as torchvision builds and trains it.

Train (torchvision's recipe: 660 epochs at batch 192, SGD momentum 0.9, lr 0.15
scaled linearly with the batch, cosine decay with a 1000-step linear warmup,
weight decay 4e-5 on every parameter, IoU crop and flip only):
  python -m ssd_jax.main --config=configs/coco_ssdlite320.py --workdir=/tmp/coco_ssdlite
On fewer devices, set a smaller batch; the learning rate follows it
(--config.train.batch_size=64 trains at 0.05). From torchvision's ImageNet
backbone (full tail):
  python -m ssd_jax.convert --format=mobilenet_v3_large --input=mobilenet_v3_large-8738ca79.pth --output=/tmp/mobilenet_v3
  python -m ssd_jax.main --config=configs/coco_ssdlite320.py --workdir=/tmp/coco_ssdlite --config.backbone.reduced_tail=False --config.model.init_checkpoint=/tmp/mobilenet_v3

Or convert torchvision's COCO detector (its published COCO val AP is 21.3) and
evaluate it on COCO val2017 (prepared in TFDS); the converter writes this config
as config.json:
  python -m ssd_jax.convert --format=torchvision_ssdlite320 --input=ssdlite320_mobilenet_v3_large_coco-a79551df.pth --output=/tmp/tv_ssdlite
  python -m ssd_jax.main --mode=eval --workdir=/tmp/tv_ssdlite

Every value is `recipes.torchvision_ssdlite320()` (architecture preset
'ssdlite320').
"""
from ssd_jax import recipes


def get_config():
  return recipes.torchvision_ssdlite320('coco')
