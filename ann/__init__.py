"""A classic multilayer neural network in plain NumPy.

Dense layers, sigmoid/tanh/ReLU activations, binary cross-entropy, SGD with momentum and Adam,
a training loop with early stopping, metrics, and pickle-free model files. Only
``ann/parallel.py`` knows about Dask.
"""
