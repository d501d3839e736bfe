"""planner: `plan(Machine, ModelSpec, Preferences) -> Plan`, pure (no torch, no I/O). Every choice and
every rejected alternative carries a typed kind (types.py) plus a human reason."""
