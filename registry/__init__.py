"""The model registry: versioned artifacts in a store, their publication and the notification
channel. The only contract between the trainer (writes) and the inference service (reads)."""
