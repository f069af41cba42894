"""The large-scene engine: streaming reads from rasters, model workers, merging, geo outputs."""
