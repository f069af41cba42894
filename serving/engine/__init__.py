"""The large-scene engine: opening scenes, planning and streaming windows, model workers, running a scene."""
