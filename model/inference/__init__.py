"""Model registry (metadata, torch-free) and inference backends (worker only)."""
