"""Nuclei with Mask R-CNN, the U-Net and Otsu: ``python samples/nucleus/train.py --help``.

Modules: ``nucleus`` (NucleusConfig, NucleusDataset, image kinds), ``cli_common`` (configs,
run folders, datasets shared by the commands), ``cli_train``, ``cli_unet``, ``cli_eval``
(evaluate, detect), ``cli_compare`` and ``train`` (the entry point and the demo).
"""
