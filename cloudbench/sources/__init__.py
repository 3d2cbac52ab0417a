"""Sources: where pixels come from (see base.py for the interface)."""
