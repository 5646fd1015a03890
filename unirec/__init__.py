"""unirec: streaming online training over one unified embedding table.

This package holds what every process shares: settings, logging, local infrastructure and the
`unirec` command line. The model library is `embedding`, the training job `trainer`, the HTTP
service and event tools `services`.
"""

__version__ = "0.1.0"
