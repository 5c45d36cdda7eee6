"""ASGI entry point: `uvicorn intric.main:app --host 0.0.0.0 --port 8123`.

Importing this module validates the environment and exits(2) with one message if it is wrong.
"""

from intric.api import create_app
from intric.logs import configure_logging
from intric.settings import get_settings

settings = get_settings()
configure_logging(settings.loglevel)
app = create_app(settings)
