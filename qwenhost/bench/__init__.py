"""`qwenhost bench`: qwenhost side by side with llama-server on the same model file and machine."""
