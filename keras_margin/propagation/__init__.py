"""Bound propagation: a network's proven bounds over an input ball, as `keras.ops` programs.

network.py reads a Keras model as a graph of affine maps, sums, ReLUs and max poolings;
relaxations.py holds CROWN's linear relaxations; patches.py passes a convolutional map's rows as
patches; bounds.py computes intervals, CROWN, CROWN-IBP and Lipschitz bounds of the margins (what
`keras_margin.certify` measures with); margins.py the same bounds as a differentiable training
signal (what `CertifiedTrainingModel` trains on). It stands below the trainers and every
measurement: it imports only the backend seam.
"""
