"""Graph and loop passes, and the pipeline table that orders them."""
