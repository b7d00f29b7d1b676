"""SSDLite320-MobileNetV3-Large on PASCAL VOC 07+12, with torchvision's COCO recipe.

  python -m ssd_jax.main --config=configs/voc_ssdlite320.py --workdir=/tmp/voc_ssdlite

The architecture, optimiser, schedule and augmentation of configs/coco_ssdlite320.py
(`recipes.torchvision_ssdlite320`), VOC's 20 classes, splits and VOC07 metric;
660 epochs of the 16,551 VOC 07+12 trainval images (an ssd_jax choice: torchvision
publishes no VOC recipe). Fine-tune from converted COCO weights with
--config.model.init_checkpoint=/tmp/tv_ssdlite, the output of the torchvision_ssdlite320
conversion (configs/coco_ssdlite320.py): all but the class heads load.
"""
from ssd_jax import recipes


def get_config():
  return recipes.torchvision_ssdlite320('voc')
