"""Networks as pure Flax modules plus the functions that run them; they take arrays, never files."""
