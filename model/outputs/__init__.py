"""Result formats built from a task's stored items: JSON, IIIF annotations, YOLO txt files.
Torch-free: the API builds them on request from what the worker stored."""
