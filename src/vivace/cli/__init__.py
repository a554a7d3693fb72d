"""The ``vivace`` command: the only layer that prints or exits."""
