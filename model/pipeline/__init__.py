"""Moving pages through the worker: a bounded prefetch of downloads ahead of inference, and a
content-addressed cache of detections. Torch-free (the job hands the model in)."""
