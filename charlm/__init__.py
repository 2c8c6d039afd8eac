"""charlm: a character-level LSTM language model you can read, train, sample and serve."""

__version__ = "0.1.0"
