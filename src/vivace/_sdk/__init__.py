"""SDK machinery behind the public surface. Modules here import nothing heavy at import time."""
