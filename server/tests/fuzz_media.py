"""What schemathesis should put in the upload parts of POST /task: real (tiny) images and IIIF
manifests, as the document's `encoding` asks, instead of random bytes the API rightly refuses.

Imported by test_schema_fuzz.py; for the CLI: `SCHEMATHESIS_HOOKS=server.tests.fuzz_media
schemathesis run ...` (see test_schema_fuzz.py).
"""

from __future__ import annotations

import io
import json

import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def _image(draw: st.DrawFn, fmt: str) -> bytes:
    size = (draw(st.integers(8, 64)), draw(st.integers(8, 64)))
    colour = draw(st.tuples(*[st.integers(0, 255)] * 3))
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def _manifest(draw: st.DrawFn) -> bytes:
    """A Presentation 3 manifest of 1-3 canvases (its images are not reachable: pages fail)."""
    base = "https://iiif.example.org/fuzz"
    canvases = [
        {
            "id": f"{base}/canvas/{i}",
            "type": "Canvas",
            "width": 100,
            "height": 100,
            "items": [
                {
                    "id": f"{base}/page/{i}",
                    "type": "AnnotationPage",
                    "items": [
                        {
                            "id": f"{base}/anno/{i}",
                            "type": "Annotation",
                            "motivation": "painting",
                            "body": {"id": f"{base}/{i}.jpg", "type": "Image"},
                            "target": f"{base}/canvas/{i}",
                        }
                    ],
                }
            ],
        }
        for i in range(draw(st.integers(1, 3)))
    ]
    manifest = {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": f"{base}/manifest",
        "type": "Manifest",
        "label": {"en": ["fuzz"]},
        "items": canvases,
    }
    return json.dumps(manifest).encode()


schemathesis.openapi.media_type("image/png", _image("PNG"))
schemathesis.openapi.media_type("image/jpeg", _image("JPEG"))
schemathesis.openapi.media_type("application/ld+json", _manifest())
