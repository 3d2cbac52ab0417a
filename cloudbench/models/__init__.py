"""The networks cloudbench trains, one module per family.

- :mod:`cloudbench.models.classifiers`: scene classifiers (GoogLeNet, ResNet-50 for any number of
  input channels, their encoders) and the multimodal fusion layouts (two-stream, early fusion).

Self-supervised backbones and cloud-removal networks get their own modules here when their
method families arrive.
"""
