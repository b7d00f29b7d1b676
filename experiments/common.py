"""What the benchmark scripts share: timing a call, the torch device and model of the
torchvision reference, and the package versions they print. Imported by the
scripts beside it (run as `python experiments/<script>.py`); it imports JAX and
torch only when a function needs them, so importing it costs nothing."""
from importlib import metadata
import time


def seconds_per_call(fn, repeats: int, warmups: int = 1) -> float:
  """Mean seconds of fn() over `repeats` calls after `warmups` (compilation; a second
  warm-up lets a step that donates its input settle). fn returns something
  jax.block_until_ready accepts."""
  import jax
  for _ in range(warmups):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def torch_device() -> str:
  """'cuda' when both torch and JAX see a GPU (the reference runs where JAX does), else 'cpu'."""
  import jax
  import torch
  return 'cuda' if torch.cuda.is_available() and jax.default_backend() == 'gpu' else 'cpu'


def torch_sync(device: str) -> None:
  """Waits for torch's queued GPU work, so a timed call includes it."""
  if device == 'cuda':
    import torch
    torch.cuda.synchronize()


def torchvision_ssd300(device: str):
  """torchvision's ssd300_vgg16 for VOC's 21 classes, randomly initialised, on `device`."""
  import torch
  import torchvision
  torch.manual_seed(0)
  return torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
                                                   num_classes=21).to(device)


def torchvision_ssdlite320(device: str, num_classes: int = 21):
  """torchvision's ssdlite320_mobilenet_v3_large, randomly initialised, on `device`."""
  import torch
  import torchvision
  torch.manual_seed(0)
  return torchvision.models.detection.ssdlite320_mobilenet_v3_large(
      weights=None, weights_backbone=None, num_classes=num_classes).to(device)


def torchvision_peer_name(config):
  """The PyTorch model of the same architecture as an ssd_jax config (width 1):
  torchvision's 'ssd300_vgg16' for SSD300 layouts, 'ssdlite320_mobilenet_v3_large'
  for SSDLite320, NVIDIA's 'nvidia_ssd300' (ssd_jax.testing.nvidia_ssd300) for
  SSD300-ResNet50; None for others (SSD512: torchvision has none)."""
  m = config.model
  if m.width != 1.0:
    return None
  if m.backbone == 'resnet50' and m.image_size == 300:
    return 'nvidia_ssd300'
  if m.backbone == 'mobilenet_v3_large' and m.image_size == 320:
    return 'ssdlite320_mobilenet_v3_large'
  if m.backbone == 'vgg16' and m.image_size == 300:
    return 'ssd300_vgg16'
  return None


def torchvision_peer(config, device: str):
  """That model (torchvision_peer_name), randomly initialised on `device`, or None."""
  name = torchvision_peer_name(config)
  if name == 'nvidia_ssd300':
    import torch
    from ssd_jax.testing import nvidia_ssd300
    torch.manual_seed(0)
    return nvidia_ssd300.NvidiaSSD300(config.model.num_classes).to(device)
  if name == 'ssdlite320_mobilenet_v3_large':
    return torchvision_ssdlite320(device, config.model.num_classes)
  return torchvision_ssd300(device) if name else None


def versions(*packages: str) -> str:
  """'name version, ...' of the installed packages among `packages`."""
  found = []
  for name in packages:
    try:
      found.append(f'{name} {metadata.version(name)}')
    except metadata.PackageNotFoundError:
      pass
  return ', '.join(found)
