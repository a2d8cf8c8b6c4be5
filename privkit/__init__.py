"""privkit: differentially private, trustworthy medical AI on MedMNIST chest X-rays."""

__version__ = "0.1.0"
