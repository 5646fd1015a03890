"""unirec services: the FastAPI inference service (`services.inference`) and the event tools."""
