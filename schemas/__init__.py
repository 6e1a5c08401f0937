"""Avro contracts (``*.avsc``). Data only; ``floodgate.codec`` loads them."""
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
