"""Everything that uses TensorFlow: tf.data input pipelines, augmentation, datasets."""
