"""ssd_jax: the SSD object detector in JAX and Flax."""
from setuptools import find_packages, setup

CONVERT = ['torch>=2.1', 'torchvision>=0.16']
# `python -m ssd_jax.export --format=onnx` (tf2onnx reads the TFLite lowering) and running it.
ONNX = ['onnx>=1.16', 'onnxruntime>=1.18', 'tf2onnx>=1.16']

setup(
    name='ssd_jax',
    version='0.1.0',
    description='SSD: Single Shot MultiBox Detector in JAX/Flax for TPU and GPU.',
    packages=find_packages(include=['ssd_jax', 'ssd_jax.*']),
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.7',
        'flax>=0.11',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.11',
        'tensorflow-cpu>=2.18',   # tf.data and image ops only; JAX owns the accelerators
        'tensorflow-datasets>=4.9.8',
        'importlib_resources',    # TFDS needs it to build datasets (tests, offline data)
        'numpy>=1.26',
        # Every process that imports JAX imports ml_dtypes: 0.7.0 takes 0.55 s to import,
        # 8x 0.6.0's 0.07 s (numpy 2.4, 2-core EPYC), and adds only float8_e5m3fnu, which
        # nothing here uses. Lift the cap once a release imports fast again.
        'ml_dtypes>=0.5.4,<0.7',
        'ml-collections>=1.0',
        'absl-py',
        'tqdm',                   # progress bar with rate and ETA
        'tensorboard',            # tf.summary writes TensorBoard events; also the viewer
        'pycocotools>=2.0.8',
        'pyyaml',                 # Ultralytics data.yaml (data.format=yolo); flax brings it too
        'matplotlib',
    ],
    extras_require={
        # Reading PyTorch checkpoints in `python -m ssd_jax.convert` (nothing else uses torch).
        'convert': CONVERT,
        'onnx': ONNX,
        # nbclient, nbformat and ipykernel run experiments/demo.ipynb headless in a test;
        # torch and torchvision let the converter tests and the benchmarks compare with
        # PyTorch itself; scikit-image ships real photographs for tests and benchmarks.
        # pytest 9.2 renamed the attribute pytest-xdist 3.8 sets to group tests, so
        # --dist=loadgroup (pytest.ini) silently ran grouped tests on any worker.
        'test': ['pytest>=8,<9.2', 'pytest-xdist>=3.6', 'nbclient>=0.10', 'nbformat>=5.10',
                 'ipykernel>=6.29', 'scikit-image>=0.22'] + CONVERT + ONNX,
        # JAX for NVIDIA GPUs (the CUDA 12 wheels bring their own CUDA libraries).
        'cuda': ['jax[cuda12]'],
        # JAX for Cloud TPU VMs.
        'tpu': ['jax[tpu]'],
    },
)
