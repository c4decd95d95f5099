"""The benchmarks, one small file per family, and their registry (`registry.load_dataset`)."""
