"""Operator tools: ``floodgate plan`` and ``floodgate audit`` gather their inputs here (settings,
routing file, simulator config, the code's own defaults) and hand them to the pure rules in
``floodgate/capacity.py`` and ``floodgate/audit.py``."""
