"""HTTP routes (flask-openapi3 blueprints), auth and JSON errors. Never imports torch."""
