"""One module per script: the only code that reads Config, calls loaders, algorithms, labels and writers."""
