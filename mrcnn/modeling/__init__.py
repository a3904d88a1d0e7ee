"""Network assembly: FPN, RPN, heads, the Keras model and the Config -> model factory."""
