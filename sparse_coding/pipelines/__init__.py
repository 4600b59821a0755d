"""One module per script: the code that reads Config, loads, runs the algorithms and writes."""
