"""Many scenes through one worker pool: expanding inputs and the resumable batch runner."""
