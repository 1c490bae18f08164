"""server layer: see the README's design notes."""
