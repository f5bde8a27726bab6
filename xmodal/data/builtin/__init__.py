"""The built-in dataset: synthetic recipes and photos written in the raw Recipe1M layout, then
prepared like any other (generated on first use, cached)."""
