"""The schema: every setting with the default all SSD recipes share.

`fields()` is model-free: the section `backbone`, whose fields depend on the
model family model.backbone names, is left empty here and filled in by
config_lib.base_config, which also locks the config and validates it against
the families (config_lib.validate). Config files in `configs/` start from
config_lib.base_config through the presets of ssd_jax/recipes.py. Where each
value of the authors' recipe comes from, and where ssd_jax differs from it:
docs/recipe.md (tests/test_recipe.py keeps the two in agreement).
"""
from __future__ import annotations

from ml_collections import config_dict

from ssd_jax import pixels


def fields() -> config_dict.ConfigDict:
  """Every field with its shared default, unlocked, the section `backbone` empty;
  `None` placeholders must be set."""
  c = config_dict.ConfigDict()
  c.seed = 0

  c.model = config_dict.ConfigDict(dict(
      image_size=config_dict.placeholder(int),   # side of the square input, pixels
      # Including background (class 0); None: from data.class_names or data.name's
      # label map (config_lib.validate derives it, the one place that does).
      num_classes=config_dict.placeholder(int),
      backbone='vgg16',                          # a family of ssd_jax.models; settings: backbone
      head='ssd',                                # models.all_heads(): 'ssd' (3x3 convs), ...
      # Prediction source layers, network order (an architecture preset sets them).
      sources=config_dict.placeholder(tuple),
      width=1.0,                                 # channel multiplier (tiny models < 1)
      batch_norm_momentum=0.99,                  # BatchNorm layers, where a part has them
      batch_norm_epsilon=1e-5,
      dtype='float32',                           # compute dtype, e.g. 'bfloat16'
      param_dtype='float32',
      # Orbax checkpoint (workdir, checkpoints/ or a step folder) whose matching
      # parameters (same name and shape) initialise a new run: a pretrained
      # base, or a detector to fine-tune on other classes.
      init_checkpoint=config_dict.placeholder(str),
      # Or published weights by name (ssd_jax.pretrained.PUBLISHED, e.g.
      # 'vgg16_imagenet'): downloaded and converted once, then as init_checkpoint.
      init_from=config_dict.placeholder(str),
  ))

  # Default boxes; sizes in pixels of the network input. When min_sizes is
  # None, sizes come from the paper's s_min / s_max rule.
  c.anchors = config_dict.ConfigDict(dict(
      min_sizes=config_dict.placeholder(tuple),
      max_sizes=config_dict.placeholder(tuple),
      steps=config_dict.placeholder(tuple),      # None: image_size / feature size
      aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
      s_min=0.2,
      s_max=0.9,
      first_scale=0.1,                           # conv4_3's scale in the paper
      clip='none',                               # anchors.CLIP_MODES; the recipe does not clip
      variances=(0.1, 0.2),                      # centre, size
  ))

  # The settings of the backbone model.backbone names; their fields depend on
  # which (config_lib.base_config fills them in from the family).
  c.backbone = config_dict.ConfigDict()

  # matching.RULES: 'bipartite' pairing, then IoU >= threshold (the authors');
  # 'forced_best': each object's best box, then IoU > threshold (NVIDIA's).
  c.matching = config_dict.ConfigDict(dict(iou_threshold=0.5, rule='bipartite'))
  # normalize (losses.NORMALIZE): divide by the batch's matched boxes ('batch',
  # the authors') or each image by its own and average ('image', NVIDIA's).
  c.loss = config_dict.ConfigDict(dict(neg_pos_ratio=3.0, loc_weight=1.0, normalize='batch'))

  c.data = config_dict.ConfigDict(dict(
      # 'tfds': splits are 'name/config:split' (e.g. 'voc/2007:test');
      # 'voc_folder': splits are ImageSets/Main names under data.root, or, in a
      #   folder without ImageSets (images and XML files), 'train' and 'val';
      # 'yolo': data.root is an Ultralytics data.yaml (or its folder); splits
      #   are its keys ('train', 'val', 'test');
      # 'coco_json': splits are 'annotations.json:image_dir' under data.root.
      format='tfds',
      root=config_dict.placeholder(str),         # custom dataset folder
      # Custom classes; None: the YOLO YAML's names, else the label map of data.name.
      class_names=config_dict.placeholder(tuple),
      # Dataset category id of each model class 1..C-1 in COCO-format files;
      # None: COCO's official ids for COCO's classes, else the model class.
      category_ids=config_dict.placeholder(tuple),
      name=config_dict.placeholder(str),         # 'voc', 'coco', ...
      train_splits=config_dict.placeholder(tuple),
      eval_split=config_dict.placeholder(str),
      data_dir=config_dict.placeholder(str),     # TFDS data_dir; None: TFDS default
      # A voc_folder without ImageSets: the share of its images in split 'val'
      # (seeded by seed; custom_data.split_stems) and the JSON file recording the
      # split (training sets <workdir>/data_split.json; evaluation reads it).
      val_fraction=0.1,
      split_file=config_dict.placeholder(str),
      mean_rgb=pixels.MEAN_RGB,                  # network input: (pixel - mean) / std, RGB
      std_rgb=(1.0, 1.0, 1.0),                   # the VGG recipes: 1 (mean subtracted only)
      max_boxes=100,                             # training ground truth padded to this many
      # Side of the square uint8 buffer each training image's decoded crop
      # travels to the device in (pixels.py finishes it there). A crop larger
      # on a side is shrunk on the host to fit first: VOC's images are at most
      # 500 pixels a side, COCO's 640.
      pixel_buffer=512,
  ))

  # Training augmentation, the authors' release (ssd_jax/data/augment.py;
  # docs/recipe.md). enabled=False is the paper's "no data augmentation"
  # ablation: a bilinear resize only.
  c.augment = config_dict.ConfigDict(dict(
      enabled=True,
      photometric=True,
      photometric_style='release',               # or 'dali' (NVIDIA's SSD300): pixels.py
      photometric_prob=0.5,                      # each photometric step ('release')
      brightness_delta=32.0,                     # pixels, of 255, added ('release')
      brightness_range=(0.875, 1.125),           # a gain ('dali')
      contrast_range=(0.5, 1.5),
      saturation_range=(0.5, 1.5),
      hue_delta=18.0,                            # OpenCV's 0..180 hue scale: +-36 degrees
      channel_swap_prob=0.0,                     # the release's 0; some ports use 0.5
      zoom_out=True,                             # the release's "expand" (SSD300*/SSD512*)
      zoom_out_prob=0.5,
      zoom_out_max_ratio=4.0,
      crop=True,                                 # batch sampling: whole image or a patch
      crop_style='release',                      # or 'dali' (NVIDIA's SSD300): augment.py
      crop_min_ious=(0.1, 0.3, 0.5, 0.7, 0.9),   # one sampler each: IoU with any box >= it
      crop_any_patch=True,                       # the sampler with max IoU 1.0
      crop_min_scale=0.3,                        # the release's; the paper's text says 0.1
      crop_aspect_range=(0.5, 2.0),
      crop_trials=50,                            # per sampler; the first that qualifies
                                                 # ('dali': rounds, each drawing a threshold)
      resize_methods=pixels.RELEASE_RESIZE_METHODS,  # one drawn per image ('triangular': DALI's)
      flip=True,
      flip_prob=0.5,
  ))

  c.optim = config_dict.ConfigDict(dict(
      name='sgd',                                # 'sgd' (Caffe's, the paper's), 'sgd_torch', 'adam'
      learning_rate=1e-3,
      # The global batch learning_rate is given for; the rate then scales linearly
      # to train.batch_size. None: learning_rate as is (the SSD recipes' batch 32).
      lr_batch_size=config_dict.placeholder(int),
      momentum=0.9,
      weight_decay=5e-4,
      # Parameter roles weight decay applies to (ssd.ROLES): 'weight' (kernels,
      # the L2Norm scale), 'bias', 'norm' (BatchNorm scale and offset).
      weight_decay_roles=('weight',),
      bias_lr_mult=2.0,                          # sgd: biases learn at 2x the rate (Caffe lr_mult)
      schedule='steps',                          # 'steps' (boundaries) or 'cosine' (to num_steps)
      warmup_steps=0,                            # linear warmup; the recipe has none
      # None: warmup factor (step + 1) / warmup_steps; else linear from this factor.
      warmup_start_factor=config_dict.placeholder(float),
      boundaries=config_dict.placeholder(tuple), # steps where lr *= decay_factor
      decay_factor=0.1,
      grad_clip_norm=config_dict.placeholder(float),
      # Decay of an exponential moving average of the weights, which evaluation
      # and export then use (builders.inference_variables); None: no average.
      ema_decay=config_dict.placeholder(float),
  ))

  c.train = config_dict.ConfigDict(dict(
      batch_size=32,                             # global, over all devices and hosts
      num_steps=config_dict.placeholder(int),
      log_every=50,                              # steps between summaries (and NaN checks)
      checkpoint_every=5000,                     # steps between checkpoints
      keep_checkpoints=3,
      distributed=False,                         # several hosts: join them (see cluster)
  ))

  # Several hosts (train.distributed=True; see ssd_jax/cluster.py and the README).
  # Unset fields fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  # JAX_PROCESS_ID, then to what JAX detects (Cloud TPU, SLURM, Open MPI, k8s).
  c.cluster = config_dict.ConfigDict(dict(
      coordinator_address=config_dict.placeholder(str),  # host:port of process 0
      num_processes=config_dict.placeholder(int),
      process_id=config_dict.placeholder(int),
      initialization_timeout_s=300,              # how long hosts wait for each other to join
      heartbeat_timeout_s=20,                    # a silent host is declared dead after this
      shutdown_timeout_s=60,                     # how long a finished host waits for the rest
  ))

  c.eval = config_dict.ConfigDict(dict(
      score_threshold=0.01,
      top_k=400,                                 # per class, before NMS
      nms_iou=0.45,
      max_detections=200,                        # per image, after NMS
      clip_boxes=True,                           # decoded boxes clipped to the image before NMS
      metric='voc07',                            # 'voc07' (11-point), 'voc12', 'coco'
      every_steps=0,                             # train_and_eval: 0 = only after training
      num_rendered=16,                           # eval images drawn after train_and_eval
      draw_score=0.4,                            # boxes drawn from this score up
  ))
  return c
