"""Plain NumPy loop implementations of the paper's rules, for tests and benchmarks."""
import numpy as np

from ssd_jax import box_utils


def match_image(gt_boxes, gt_labels, anchors, threshold=0.5, variances=(0.1, 0.2), iou=None):
  """One image: f[G,4] xyxy, i[G] (0 = padding), f[A,4] cxcywh -> (f[A,4], i[A]).

  `iou` (f[G, A]) may be passed in: many default boxes tie exactly for a ground
  truth (same-size boxes inside it), and 1-ulp differences between two IoU
  computations would break those ties differently.
  """
  anchors = np.asarray(anchors, np.float64)
  if iou is None:
    iou = box_utils.pairwise_iou(np.asarray(gt_boxes, np.float64),
                                 box_utils.cxcywh_to_xyxy(anchors))
  keep = [g for g in range(len(gt_labels)) if gt_labels[g] > 0]
  num_anchors = len(anchors)
  matched = np.full(num_anchors, -1)
  if keep:
    iou = np.asarray(iou, np.float64)[keep]
    work = iou.copy()
    forced = np.zeros(num_anchors, bool)
    while work.max() > 0:  # bipartite: the globally best free pair, again and again
      g, a = np.unravel_index(np.argmax(work), work.shape)
      matched[a], forced[a] = keep[g], True
      work[g, :] = -1
      work[:, a] = -1
    for a in range(num_anchors):
      if not forced[a] and iou[:, a].max() >= threshold:
        matched[a] = keep[int(np.argmax(iou[:, a]))]
  loc = np.zeros((num_anchors, 4))
  cls = np.zeros(num_anchors, np.int64)
  for a in np.flatnonzero(matched >= 0):
    g = matched[a]
    cls[a] = gt_labels[g]
    gx0, gy0, gx1, gy1 = gt_boxes[g]
    dcx, dcy, dw, dh = anchors[a]
    loc[a] = [((gx0 + gx1) / 2 - dcx) / (variances[0] * dw),
              ((gy0 + gy1) / 2 - dcy) / (variances[0] * dh),
              np.log((gx1 - gx0) / dw) / variances[1],
              np.log((gy1 - gy0) / dh) / variances[1]]
  return loc, cls


def hardest_negatives(background, positive, neg_pos_ratio=3.0):
  """One image's hard negatives: indices of the negatives (~positive) of highest
  background loss, a stable descending sort's first min(floor(ratio x positives),
  negatives), ties to the lower index."""
  negatives = np.flatnonzero(~positive)
  n_neg = min(int(np.floor(neg_pos_ratio * positive.sum())), len(negatives))
  return negatives[np.argsort(-background[negatives], kind='stable')[:n_neg]]


def multibox_loss(loc_pred, logits, loc_t, cls_t, neg_pos_ratio=3.0, loc_weight=1.0):
  """Per-image loop; returns (loss, loc, conf, num_pos) with the batch's N."""
  loc_pred, logits = np.asarray(loc_pred, np.float64), np.asarray(logits, np.float64)
  total_loc = total_conf = 0.0
  total_pos = 0
  for b in range(len(cls_t)):
    pos = cls_t[b] > 0
    n_pos = int(pos.sum())
    diff = np.abs(loc_pred[b][pos] - loc_t[b][pos])
    total_loc += np.sum(np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5))
    shifted = logits[b] - logits[b].max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -log_probs[np.arange(len(cls_t[b])), cls_t[b]]
    hardest = hardest_negatives(-log_probs[:, 0], pos, neg_pos_ratio)
    total_conf += ce[pos].sum() + ce[hardest].sum()
    total_pos += n_pos
  n = max(total_pos, 1)
  return (total_conf + loc_weight * total_loc) / n, total_loc / n, total_conf / n, total_pos


def nms(boxes, scores, iou_threshold):
  """Greedy NMS as in every reference: best first (stable), drop overlaps > threshold."""
  order = np.argsort(-scores, kind='stable')
  keep = []
  while order.size:
    keep.append(order[0])
    overlap = box_utils.pairwise_iou(boxes[order[:1]], boxes[order[1:]])[0]
    order = order[1:][overlap <= iou_threshold]
  return keep


def postprocess(loc, logits, anchors, threshold, top_k, iou, max_det):
  """One image: the per-class loop of the reference implementations."""
  boxes = np.clip(box_utils.decode(loc, anchors), 0, 1)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  probs = e / e.sum(-1, keepdims=True)
  found = []
  for c in range(1, logits.shape[-1]):
    top = np.argsort(-probs[:, c], kind='stable')[:top_k]
    top = top[probs[top, c] > threshold]
    for i in nms(boxes[top], probs[top, c], iou):
      found.append((probs[top[i], c], c, boxes[top[i]]))
  found.sort(key=lambda f: -f[0])
  return found[:max_det]


def jaccard(a, b) -> float:
  """IoU of two normalised xyxy boxes, one at a time."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def release_crop(boxes, height, width, rng, cfg):
  """The release's expand and batch sampling for one image, literally.

  Expand (probability cfg.zoom_out_prob): a canvas of int(H r) x int(W r)
  pixels, r ~ U[1, max ratio], the image at a whole-pixel offset. Then the
  whole image, and for each constrained sampler up to cfg.crop_trials patches
  drawn one at a time until one overlaps ANY box within its IoU bounds; one of
  the qualifying patches uniformly; boxes whose centre lies in it, projected.

  Returns:
    (window [4] source-normalised xyxy, boxes [N, 4] on the window, keep bool [N]).
  """
  canvas = [0.0, 0.0, 1.0, 1.0]
  if cfg.zoom_out and rng.uniform() < cfg.zoom_out_prob:
    ratio = rng.uniform(1.0, cfg.zoom_out_max_ratio)
    canvas_h, canvas_w = int(height * ratio), int(width * ratio)
    top = np.floor(rng.uniform(0, canvas_h - height))
    left = np.floor(rng.uniform(0, canvas_w - width))
    canvas = [-left / width, -top / height, (canvas_w - left) / width,
              (canvas_h - top) / height]
  cw, ch = canvas[2] - canvas[0], canvas[3] - canvas[1]
  on_canvas = [[(b[0] - canvas[0]) / cw, (b[1] - canvas[1]) / ch,
                (b[2] - canvas[0]) / cw, (b[3] - canvas[1]) / ch] for b in boxes]
  samplers = [(m, None) for m in cfg.crop_min_ious] + ([(None, 1.0)] if cfg.crop_any_patch else [])
  found = [[0.0, 0.0, 1.0, 1.0]]
  for min_iou, max_iou in (samplers if cfg.crop else []):
    for _ in range(cfg.crop_trials):
      scale = rng.uniform(cfg.crop_min_scale, 1.0)
      aspect = rng.uniform(*cfg.crop_aspect_range)
      aspect = min(max(aspect, scale ** 2), 1 / scale ** 2)
      w, h = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
      x0, y0 = rng.uniform(0, max(1 - w, 0.0)), rng.uniform(0, max(1 - h, 0.0))
      patch = [x0, y0, x0 + w, y0 + h]
      overlaps = [jaccard(patch, b) for b in on_canvas]
      if any((min_iou is None or o >= min_iou) and (max_iou is None or o <= max_iou)
             for o in overlaps):
        found.append(patch)
        break
  patch = found[rng.integers(len(found))]
  pw, ph = patch[2] - patch[0], patch[3] - patch[1]
  out, keep = [], []
  for b in on_canvas:
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    p = [min(max((b[0] - patch[0]) / pw, 0.0), 1.0), min(max((b[1] - patch[1]) / ph, 0.0), 1.0),
         min(max((b[2] - patch[0]) / pw, 0.0), 1.0), min(max((b[3] - patch[1]) / ph, 0.0), 1.0)]
    out.append(p)
    keep.append(patch[0] <= cx <= patch[2] and patch[1] <= cy <= patch[3]
                and p[2] > p[0] and p[3] > p[1])
  window = [canvas[0] + patch[0] * cw, canvas[1] + patch[1] * ch,
            canvas[0] + patch[2] * cw, canvas[1] + patch[3] * ch]
  return np.array(window), np.array(out).reshape(-1, 4), np.array(keep, bool)


def dali_triangular_weights(n_in: int, n_out: int) -> np.ndarray:
  """f64 [n_out, n_in]: one axis of DALI's Resize with min_filter=INTERP_TRIANGULAR
  (mag_filter linear), from its resampling code: output pixel x samples source
  position s = (x + 0.5) * n_in / n_out - 0.5 (pixel indices) with the weights
  max(0, 1 - |k - s| / r), r = max(n_in / n_out, 1), over every index k near s,
  normalised to sum 1; an index beyond the image reads the edge pixel."""
  scale = n_in / n_out
  radius = max(scale, 1.0)
  out = np.zeros((n_out, n_in))
  for x in range(n_out):
    s = (x + 0.5) * scale - 0.5
    ks = np.arange(int(np.floor(s - radius)) - 1, int(np.ceil(s + radius)) + 2)
    w = np.maximum(0.0, 1.0 - np.abs(ks - s) / radius)
    for k, wk in zip(ks, w / w.sum()):
      out[x, min(max(k, 0), n_in - 1)] += wk
  return out


def dali_triangular_resize(image, height: int, width: int) -> np.ndarray:
  """[H, W, C] -> f64 [height, width, C], rows then columns as DALI's resize."""
  rows = dali_triangular_weights(image.shape[0], height)
  cols = dali_triangular_weights(image.shape[1], width)
  return np.einsum('yh,hwc,xw->yxc', rows, np.asarray(image, np.float64), cols)
