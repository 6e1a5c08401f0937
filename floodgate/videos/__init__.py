"""Videos kept in Floodgate's own store: the copier that fills it from ``results``."""
