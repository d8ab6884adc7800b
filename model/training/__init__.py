"""Fine-tuning detectors on annotated pages, and the domain-shift benchmark it is measured on."""
