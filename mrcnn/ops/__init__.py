"""Stateless box, anchor, mask and image operations (NumPy with TensorFlow twins)."""
