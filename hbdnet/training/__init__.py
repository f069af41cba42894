"""Stage-by-stage training of HBD-Net on DOTA-format data."""
