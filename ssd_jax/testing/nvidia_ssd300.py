"""SSD300-ResNet50 as NVIDIA's DeepLearningExamples writes it (PyTorch/Detection/SSD:
ssd/model.py, ssd/utils.py): the model, its default boxes, box encoder, decoder
and loss, for tests and benchmarks that check ssd_jax's ResNet family
(ssd_jax/models/resnet.py) against it. Needs torch and torchvision
(pip install -e ".[test]").
"""
import torch


class _ResNetBase(torch.nn.Module):
  """torchvision's ResNet-50 children 0..6 (to layer3), layer3 at stride 1: NVIDIA's
  ssd/model.py ResNet, whose state-dict keys sit under feature_extractor."""

  def __init__(self):
    super().__init__()
    import torchvision
    backbone = torchvision.models.resnet50(weights=None)
    self.feature_extractor = torch.nn.Sequential(*list(backbone.children())[:7])
    block = self.feature_extractor[-1][0]
    block.conv1.stride, block.conv2.stride = (1, 1), (1, 1)
    block.downsample[0].stride = (1, 1)

  def forward(self, x):
    return self.feature_extractor(x)


def _additional_block(inputs: int, channels: int, outputs: int, last: bool):
  nn = torch.nn
  conv3 = (nn.Conv2d(channels, outputs, 3, bias=False) if last else
           nn.Conv2d(channels, outputs, 3, padding=1, stride=2, bias=False))
  return nn.Sequential(nn.Conv2d(inputs, channels, 1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True), conv3, nn.BatchNorm2d(outputs),
                       nn.ReLU(inplace=True))


class NvidiaSSD300(torch.nn.Module):
  """NVIDIA's SSD300 (ssd/model.py): the base, five additional blocks, 3x3 loc
  and conf heads (4/6/6/6/4/4 boxes), Xavier-uniform weights. forward(x NCHW)
  -> (locs [N, 4, 8732], confs [N, label_num, 8732]), each level's outputs
  viewed as [N, 4 or label_num, k*H*W] as their bbox_view does."""

  def __init__(self, label_num: int = 81):
    super().__init__()
    nn = torch.nn
    self.feature_extractor = _ResNetBase()
    self.label_num = label_num
    channels = [1024, 512, 512, 256, 256, 256]
    self.additional_blocks = nn.ModuleList([
        _additional_block(i, c, o, last=k >= 3) for k, (i, o, c) in enumerate(
            zip(channels[:-1], channels[1:], [256, 256, 128, 128, 128]))])
    self.num_defaults = [4, 6, 6, 6, 4, 4]
    self.loc = nn.ModuleList([nn.Conv2d(c, k * 4, 3, padding=1)
                              for k, c in zip(self.num_defaults, channels)])
    self.conf = nn.ModuleList([nn.Conv2d(c, k * label_num, 3, padding=1)
                               for k, c in zip(self.num_defaults, channels)])
    for layer in [*self.additional_blocks, *self.loc, *self.conf]:
      for param in layer.parameters():
        if param.dim() > 1:
          nn.init.xavier_uniform_(param)

  def maps(self, x):
    x = self.feature_extractor(x)
    feed = [x]
    for block in self.additional_blocks:
      x = block(x)
      feed.append(x)
    return feed

  def forward(self, x):
    feed = self.maps(x)
    locs = [l(s).reshape(s.size(0), 4, -1) for s, l in zip(feed, self.loc)]
    confs = [c(s).reshape(s.size(0), self.label_num, -1) for s, c in zip(feed, self.conf)]
    return torch.cat(locs, 2), torch.cat(confs, 2)


def nvidia_default_boxes(fig_size=300, feat_size=(38, 19, 10, 5, 3, 1),
                         steps=(8, 16, 32, 64, 100, 300),
                         scales=(21, 45, 99, 153, 207, 261, 315),
                         aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))):
  """NVIDIA's DefaultBoxes (ssd/utils.py): f32[8732, 4] cx, cy, w, h clamped to
  [0, 1], ordered level, box shape, row, column."""
  import itertools
  import math
  boxes = []
  for idx, sfeat in enumerate(feat_size):
    fk = fig_size / steps[idx]
    sk1, sk2 = scales[idx] / fig_size, scales[idx + 1] / fig_size
    sizes = [(sk1, sk1), (math.sqrt(sk1 * sk2),) * 2]
    for alpha in aspect_ratios[idx]:
      w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
      sizes += [(w, h), (h, w)]
    for w, h in sizes:
      for i, j in itertools.product(range(sfeat), repeat=2):
        boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
  return torch.tensor(boxes, dtype=torch.float).clamp_(min=0, max=1)


def _iou(box, boxes):
  lt = torch.maximum(box[:2], boxes[:, :2])
  rb = torch.minimum(box[2:], boxes[:, 2:])
  inter = (rb - lt).clamp(min=0).prod(1)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
  return inter / (area(box) + area(boxes) - inter)


def nvidia_decode(locs, confs, dboxes, criteria=0.5, max_output=200, max_num=200,
                  threshold=0.05):
  """NVIDIA's Encoder.decode_batch for one image (ssd/utils.py): locs f[4, A],
  confs f[C, A] -> (ltrb boxes f[N, 4] normalised, not clipped; labels; scores),
  best first. Softmax; per class (not 0): score > threshold, the best max_num,
  greedy NMS keeping IoU < criteria; the best max_output over classes."""
  xy = 0.1 * locs[:2].T * dboxes[:, 2:] + dboxes[:, :2]
  wh = torch.exp(0.2 * locs[2:].T) * dboxes[:, 2:]
  boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
  scores = torch.softmax(confs.T, -1)
  out_boxes, out_labels, out_scores = [], [], []
  for label in range(1, scores.shape[1]):
    score = scores[:, label]
    keep = score > threshold
    cand_boxes, cand_scores = boxes[keep], score[keep]
    order = cand_scores.argsort()[-max_num:]
    while order.numel():
      best = order[-1]
      out_boxes.append(cand_boxes[best])
      out_labels.append(label)
      out_scores.append(cand_scores[best])
      rest = order[:-1]
      order = rest[_iou(cand_boxes[best], cand_boxes[rest]) < criteria]
  if not out_scores:
    return torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long), torch.zeros((0,))
  out_scores = torch.stack(out_scores)
  best = out_scores.argsort(descending=True)[:max_output]
  return (torch.stack(out_boxes)[best], torch.tensor(out_labels)[best], out_scores[best])


def nvidia_encode(boxes, labels, dboxes, criteria=0.5):
  """NVIDIA's Encoder.encode (ssd/utils.py) for one image: ground truth boxes
  f[G, 4] normalised ltrb with labels i[G], default boxes f[A, 4] cxcywh ->
  (each default box's target f[A, 4] cxcywh: its object's box, or itself when
  background; labels i[A], 0 background). Each object forces its best default
  box (a later object overwriting an earlier one), then IoU > criteria."""
  half = dboxes[:, 2:] / 2
  dboxes_ltrb = torch.cat([dboxes[:, :2] - half, dboxes[:, :2] + half], 1)
  ious = torch.stack([_iou(box, dboxes_ltrb) for box in boxes])  # [G, A]
  best_iou, best_object = ious.max(dim=0)
  _, best_box = ious.max(dim=1)
  best_iou[best_box] = 2.0
  for g in range(len(boxes)):  # in order: the later object keeps a shared box
    best_object[best_box[g]] = g
  positive = best_iou > criteria
  labels_out = torch.zeros(len(dboxes), dtype=torch.long)
  labels_out[positive] = labels[best_object[positive]]
  out = dboxes_ltrb.clone()
  out[positive] = boxes[best_object[positive]]
  return torch.cat([(out[:, :2] + out[:, 2:]) / 2, out[:, 2:] - out[:, :2]], 1), labels_out


class NvidiaLoss(torch.nn.Module):
  """NVIDIA's Loss (ssd/model.py) on encoded targets: smooth L1 on positives
  (targets scaled by 1/0.1 and 1/0.2 against the default boxes), cross-entropy
  on positives and the 3x-positives hardest negatives, each image's sum divided
  by its positives, averaged over images. dboxes: f[A, 4] cxcywh (their order);
  forward(ploc [N, 4, A], plabel [N, C, A], gloc [N, 4, A] cxcywh, glabel [N, A])."""

  def __init__(self, dboxes):
    super().__init__()
    self.dboxes = torch.nn.Parameter(dboxes.t().unsqueeze(0), requires_grad=False)
    self.sl1 = torch.nn.SmoothL1Loss(reduction='none')
    self.ce = torch.nn.CrossEntropyLoss(reduction='none')

  def forward(self, ploc, plabel, gloc, glabel):
    gxy = 10 * (gloc[:, :2] - self.dboxes[:, :2]) / self.dboxes[:, 2:]
    gwh = 5 * (gloc[:, 2:] / self.dboxes[:, 2:]).log()
    mask = glabel > 0
    pos_num = mask.sum(dim=1)
    sl1 = (mask.float() * self.sl1(ploc, torch.cat((gxy, gwh), 1)).sum(dim=1)).sum(dim=1)
    con = self.ce(plabel, glabel)
    con_neg = con.clone()
    con_neg[mask] = 0
    _, con_idx = con_neg.sort(dim=1, descending=True)
    _, con_rank = con_idx.sort(dim=1)
    neg_mask = con_rank < torch.clamp(3 * pos_num, max=mask.size(1)).unsqueeze(-1)
    closs = (con * (mask + neg_mask).float()).sum(dim=1)
    num_mask = (pos_num > 0).float()
    return ((sl1 + closs) * num_mask / pos_num.float().clamp(min=1e-6)).mean(dim=0)
