"""Datasets and the loaders that feed the train loop, one concept per module:

- splits.py: what a dataset factory returns (`Splits` of two `TensorSplit`s or map-style datasets, and the
  holdout), the augmentation settings of in-memory images, `hold_out` (`dataset.holdout`: a stratified part
  of the training set for selection, evaluated as holdout/*), `limit` (quick runs on a fixed subset),
  `DataShape` (what a config says about its data without loading it: the pre-flight's run length and models'
  sizes).
- datasets.py: the factories, the `_target_`s of conf/dataset (digits, synthetic, CIFAR, image folders,
  Hugging Face), each with its config check (run by the pre-flight and by the factory) and its `describe`.
- label_noise.py: corrupted training labels (`dataset.label_noise`).
- sharding.py: which samples each rank sees.
- loaders.py: the device-resident `TensorLoader`, the DataLoader-based `FolderLoader`, `build_loaders`.

Every loader yields `(images, labels, sample_indices)` so per-sample memories (self-distillation) work on
every path.
"""
