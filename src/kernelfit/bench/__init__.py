"""bench: measure plan candidates (measure.py, torch), list them (candidates), and keep the measured
winners (cache.py, the tune cache; no torch)."""
