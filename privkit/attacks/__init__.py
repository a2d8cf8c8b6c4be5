"""Attacks on trained models and shared updates."""
