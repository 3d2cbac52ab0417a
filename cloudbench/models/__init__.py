"""The networks cloudbench trains, one module per family.

- :mod:`cloudbench.models.classifiers`: scene classifiers (GoogLeNet, ResNet-50 for any number of
  input channels, their encoders) and the multimodal fusion layouts (two-stream, early fusion).
- :mod:`cloudbench.models.backbones`: SSL backbones, the SSL4EO-S12 ResNet-50 (MoCo v2) and
  ViT-S/16 (MoCo v3, MAE) from TorchGeo's weight enums, read offline, for S2-only, S1-only and
  14-channel inputs (first layer stitched by band name), their normalisation and late fusion.
- :mod:`cloudbench.models.cloud_removal`: mono-temporal cloud-removal networks (UnCRtainTS, SSCR,
  U-Net, U-TAE on one date), ``model(s2_cloudy, s1) -> {mean, variance}``, registry ``CR_MODELS``.
"""
