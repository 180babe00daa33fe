"""Training data for the priors: procedural people (:mod:`training.synth`)."""
