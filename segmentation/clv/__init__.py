"""Customer lifetime value models in numpy/scipy: BG/NBD purchase counts, Gamma-Gamma spend."""
