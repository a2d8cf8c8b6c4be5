"""Attacks on trained models, to measure what differential privacy prevents.

Modules (import them directly; this package imports nothing heavy):

* ``privkit.attacks.scores``: metrics of a membership attack from its scores (ROC AUC, TPR at
  low FPR, balanced accuracy, Clopper-Pearson intervals): arrays in, named metrics out.
* ``privkit.attacks.membership``: membership inference: the loss-threshold attack (Yeom et al.
  2018) and LiRA with shadow models trained at once (Carlini et al. 2022).

The privacy audit built on these scores (canaries, empirical epsilon lower bounds) lives in
``privkit.audit``.
"""
