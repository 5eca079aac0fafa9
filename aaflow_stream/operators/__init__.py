"""Operators: the work each stage does, behind one small contract (see ``base``)."""
