"""One provider per infra behind one small interface (see base.py)."""
