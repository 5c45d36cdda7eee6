import logging

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Our own loggers (`intric.*`) at LOGLEVEL, with their own handler.

    uvicorn and arq configure their loggers themselves; not touching the root logger keeps
    their lines from being printed twice.
    """
    logger = logging.getLogger("intric")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
    logger.propagate = False
