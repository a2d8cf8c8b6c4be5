"""Attacks on trained models and shared updates, to measure what differential privacy prevents.

Modules (import them directly; this package imports nothing heavy):

* ``privkit.attacks.scores``: metrics of a membership attack from its scores (ROC AUC, TPR at
  low FPR, balanced accuracy, Clopper-Pearson intervals): arrays in, named metrics out.
* ``privkit.attacks.membership``: membership inference: the loss-threshold attack (Yeom et al.
  2018) and LiRA with shadow models trained at once (Carlini et al. 2022).
* ``privkit.attacks.reconstruction``: X-rays rebuilt from one shared gradient: inverting
  gradients (Geiping et al. 2020), DLG (Zhu et al. 2019) and iDLG labels, undefended, clipped
  or under DP noise; ``image_similarity`` (PSNR, SSIM, matching) and ``reconstruction_plots``.

The privacy audit built on membership scores (canaries, empirical epsilon lower bounds) lives
in ``privkit.audit``.
"""
