"""A neural network in plain NumPy: the classic dense network and a small convolutional one.

Modules, one concern each:

- :mod:`ann.functions`: activations, their derivatives and the loss, in tables;
- :mod:`ann.layers`: the dense layer as a forward/backward pair;
- :mod:`ann.conv`: convolution (im2col + BLAS, stride 1/2, "valid"/"same") and pooling
  (2 x 2 max, global max/average, and their sliding forms) as forward/backward pairs,
  channels-last;
- :mod:`ann.network`: the :class:`~ann.network.MLP` over feature vectors (N, F);
- :mod:`ann.convnet`: the :class:`~ann.convnet.ConvNet` over pixel windows (N, H, W, C),
  described by plain data, with fully convolutional scoring of whole images;
- :mod:`ann.augment`: the 8 symmetries of the square, chosen per example by a seeded hash;
- :mod:`ann.optim`: SGD with momentum and Adam;
- :mod:`ann.train`: the training loop (mini-batches, early stopping, divergence check);
- :mod:`ann.shards`: the fixed partition of a training set for exact data-parallel training;
- :mod:`ann.parallel`: the same on Dask workers (the only module that imports Dask);
- :mod:`ann.standardize`: per-feature or per-channel normalization statistics;
- :mod:`ann.metrics`: classification metrics and thresholds;
- :mod:`ann.io`: classifiers and their pickle-free model files.
"""
