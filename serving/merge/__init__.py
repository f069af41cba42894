"""Scene-wide merging of window detections from every pyramid level (holistic, and the authors' baseline)."""
