"""IIIF: read Presentation 2.x/3.0 manifests and collections, negotiate Image API 2/3 requests.

Torch-free: the API validates uploaded manifests and the CLI previews tasks with it.
"""
