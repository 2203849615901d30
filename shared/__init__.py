"""What crosses process boundaries: wire types, Redis names, configuration."""
