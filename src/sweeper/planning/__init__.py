"""Planning: a config's jobs -> checked ImageSpecs (pure: no torch), and how they are batched."""
